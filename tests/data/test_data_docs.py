"""Every `python -m trm.data.build` command shown in the docs parses and names valid builder
arguments (building needs the network for some sources, so the commands are not run)."""

import glob
import os
import re
import shlex

import pytest

from trm.data.build import _parser
from trm.data.builders import BUILDERS, COMMON_ARGS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMANDS = []
for doc in sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))) + [os.path.join(REPO,
                                                                                 "README.md")]:
    for line in open(doc).read().splitlines():
        m = re.search(r"python3? -m trm\.data\.build (.+?)(?:`|$)", line)
        if m and not re.search(r"<|\.\.\.|\[--", m.group(1)):  # skip usage templates
            COMMANDS.append((os.path.basename(doc), m.group(1).strip()))


def test_docs_show_build_commands():
    assert any(doc == "SETUP_GUIDE.md" for doc, _ in COMMANDS)


@pytest.mark.parametrize("doc,command", COMMANDS)
def test_doc_build_command_is_valid(doc, command):
    ns = _parser().parse_args(shlex.split(command))
    builder = BUILDERS[ns.builder]
    args = {a.name: getattr(ns, a.name) for a in builder.args + COMMON_ARGS
            if getattr(ns, a.name) is not None}
    builder.resolve(args)  # converts and validates every argument
