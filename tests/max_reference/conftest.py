"""Reports how many generated differential cases ran against MAX 26.7.0 and how many matched."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from tests.max_reference.cases import TALLY

    if not TALLY:
        return
    ran = sum(r for r, _ in TALLY.values())
    matched = sum(m for _, m in TALLY.values())
    detail = ", ".join(f"{k} {m}/{r}" for k, (r, m) in TALLY.items())
    terminalreporter.write_line(f"MAX 26.7.0 differential: {matched} of {ran} generated cases "
                                f"matched ({detail})")
