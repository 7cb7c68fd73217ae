"""Entry point the Pulumi CLI runs for `pulumi preview --policy-pack policies`.

The CLI starts this file inside the pack directory, so the rules module is imported by its plain name;
the repository root is put on the path so the rules can read the shared token names from
ontosearch.constants.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent):
    if str(path) not in sys.path:
        sys.path.append(str(path))

from pulumi_policy import EnforcementLevel, PolicyPack  # noqa: E402
from security_policies import POLICIES  # noqa: E402

PolicyPack(
    name="ontosearch-security",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=POLICIES,
)
