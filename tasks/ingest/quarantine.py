"""Quarantine records: every rejected input, with a reason code (for counts) and a human reason."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel


class Reason(StrEnum):
    """Why an input was rejected; the value is the code counted in metrics."""

    EMPTY_FILE = "empty_file"
    NOT_A_VIDEO = "not_a_video"
    NO_VIDEO_STREAM = "no_video_stream"
    TRUNCATED = "truncated"
    TOO_FEW_FRAMES = "too_few_frames"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    TOO_SMALL = "too_small"
    TOO_MANY_PIXELS = "too_many_pixels"
    DECODE_ERROR = "decode_error"
    DECODE_TIMEOUT = "decode_timeout"
    DECODER_CRASHED = "decoder_crashed"
    MISSING = "missing"
    FORBIDDEN = "forbidden"
    READ_ERROR = "read_error"
    MALFORMED_MANIFEST = "malformed_manifest"


class QuarantineRecord(BaseModel):
    """One rejected input: which one, why (code and words), and at which step."""

    input: str
    reason_code: Reason
    reason: str
    stage: str

    def line(self) -> str:
        """The record as one human line: `input: reason`."""
        return f"{self.input}: {self.reason}"


class Rejected(Exception):
    """Raised inside the per-input work to turn an input into a quarantine record."""

    def __init__(self, code: Reason, reason: str, stage: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.stage = stage

    def record(self, input_key: str) -> QuarantineRecord:
        """The quarantine record of this rejection for `input_key`."""
        return QuarantineRecord(
            input=input_key, reason_code=self.code, reason=self.reason, stage=self.stage
        )
