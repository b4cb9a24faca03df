"""Read pip-audit's JSON and say plainly what it checked: the advisory service may be unreachable,
and pip-audit then skips every dependency yet prints "No known vulnerabilities found".

    python tests/pip_audit_summary.py AUDIT.json

Exit 1 when a vulnerability is known; 0 otherwise, with a NOT CHECKED line for what was skipped."""

import json
import sys


def summarise(report: dict) -> tuple[list[str], int]:
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if d.get("skip_reason")]
    vulnerable = [d for d in deps if d.get("vulns")]
    lines = [f"pip-audit: {len(deps) - len(skipped)} of {len(deps)} pinned packages checked against the advisories"]
    for d in vulnerable:
        ids = ", ".join(v.get("id", "?") for v in d["vulns"])
        lines.append(f"VULNERABLE {d['name']} {d.get('version', '')}: {ids}")
    if skipped:
        reasons = sorted({d["skip_reason"].split(":")[0] for d in skipped})  # the rest names the package
        lines.append(f"NOT CHECKED: {len(skipped)} package(s) were skipped ({'; '.join(reasons)[:300]})"
                     + (" - nothing was checked" if len(skipped) == len(deps) else ""))
    elif not vulnerable:
        lines.append("no known vulnerabilities in the packages checked")
    return lines, 1 if vulnerable else 0


def main(path) -> int:
    with open(path) as f:
        lines, status = summarise(json.load(f))
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
