"""Optional dependencies: a missing one is reported with the extra that installs it."""

from __future__ import annotations

from types import TracebackType


class requires_extra:  # lower case: it reads as a statement, ``with requires_extra(...):``
    """Turn an ImportError raised in the block into one naming the extra to install."""

    def __init__(self, what: str, extra: str) -> None:
        self.what = what
        self.extra = extra

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, ImportError):
            raise ImportError(
                f"{self.what} needs the {self.extra!r} extra: "
                f"pip install -e '.[{self.extra}]' in a clone of flask-status"
            ) from exc
