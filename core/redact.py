"""Secrets never reach a log line: every log record's message is redacted when it is created.

Redacted: the configured secret values (:meth:`core.settings.Settings.secrets`: control tokens,
API keys, the Discord webhook and its token, SASL and database passwords) and anything after
``Bearer``/``Authorization:``, wherever it appears, including in exception text and arguments of
other libraries' log calls (aiohttp's access log, aiokafka, Faust).
"""

from __future__ import annotations

import logging
import re

MASK = "[REDACTED]"
_PATTERNS = [re.compile(r"(?i)(bearer\s+)[^\s'\",;]+"),
             re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?!bearer\b)[^\s'\",;]+"),
             re.compile(r"([?&]token=)[^&\s]+"),
             re.compile(r"(?i)((?:password|passwd|secret|api[_-]?key|access[_-]?token)['\"]?\s*[:=]\s*['\"]?)[^\s'\",;&]{4,}")]
_secrets: list[str] = []
_installed = False


def redact(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with secret values and bearer/authorization credentials replaced by ``[REDACTED]``."""
    for value in _secrets if secrets is None else secrets:
        if value in text:
            text = text.replace(value, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


def install_redaction(secrets: list[str]) -> None:
    """Redact every log record created from now on (a record factory, so it applies to every
    logger and handler, whoever configures logging later)."""
    global _installed
    _secrets[:] = sorted(set(secrets), key=len, reverse=True)
    if _installed:
        return
    _installed = True
    make_record = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is logging's problem, not ours
            return record
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None:
            # formatted later from exc_info: format it now, redacted
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return record

    logging.setLogRecordFactory(factory)
