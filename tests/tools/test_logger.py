"""The log files MindFormers users look for: `log/rank_<r>/info.log` and, beside it, `error.log`."""

from __future__ import annotations

import logging


def test_error_log_beside_info_log_holds_error_records_only(tmp_path):
    from torchformers.tools.logger import logger, set_log_dir

    info = set_log_dir(tmp_path)
    try:
        assert info == tmp_path / "log" / "rank_0" / "info.log"
        assert set_log_dir(tmp_path) == info  # a second call adds no second pair of handlers
        logger.info("an info line")
        logger.warning("a warning line")
        logger.error("an error line")
        logger.critical("a critical line")
        for handler in logger.handlers:
            handler.flush()
        errors = (info.parent / "error.log").read_text().splitlines()
        assert [line.rsplit(" - ", 1)[1] for line in errors] == ["an error line", "a critical line"]
        assert " - ERROR - an error line" in errors[0]
        assert len(info.read_text().splitlines()) == 4
    finally:
        for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(handler)
            handler.close()
