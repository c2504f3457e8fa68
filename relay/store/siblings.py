"""Where one worker process stands among the processes of one relay (``[server] workers``).

The supervisor (``relay.server.supervisor``) starts N worker processes and tells each, through
its environment, its number and a private run directory that only this relay's processes use:
for their signal sockets (``relay.store.sqlite.sibling_signals``) and their metrics sockets
(``relay.server.worker_metrics``). A process started without it is the only one: ``None``.

    siblings = Siblings.from_env(os.environ)       # None outside a supervisor
    env = Siblings(run_dir, 0, 4).env()            # what the supervisor gives worker 0 of 4
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

WORKER_ENV = "RELAY_WORKER"
RUN_DIR_ENV = "RELAY_RUN_DIR"


class SiblingsError(Exception):
    """The environment names a worker wrongly; a one-line reason."""


@dataclass(frozen=True, slots=True)
class Siblings:
    run_dir: Path
    index: int
    count: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Siblings | None:
        """This process's place, from ``RELAY_WORKER=index/count`` and ``RELAY_RUN_DIR``.

        >>> Siblings.from_env({"RELAY_WORKER": "1/2", "RELAY_RUN_DIR": "/run/relay-x"})
        Siblings(run_dir=PosixPath('/run/relay-x'), index=1, count=2)
        >>> Siblings.from_env({}) is None
        True
        """
        text = env.get(WORKER_ENV)
        if text is None:
            return None
        index, sep, count = text.partition("/")
        run_dir = env.get(RUN_DIR_ENV, "")
        if not (sep and index.isdecimal() and count.isdecimal() and run_dir):
            raise SiblingsError(f"{WORKER_ENV}={text!r}: not index/count with {RUN_DIR_ENV} set")
        siblings = cls(Path(run_dir), int(index), int(count))
        if not 0 <= siblings.index < siblings.count:
            raise SiblingsError(f"{WORKER_ENV}={text!r}: index out of range")
        return siblings

    def env(self) -> dict[str, str]:
        return {WORKER_ENV: f"{self.index}/{self.count}", RUN_DIR_ENV: str(self.run_dir)}

    def others(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]

    def socket(self, kind: str, index: int | None = None) -> str:
        """The path of worker ``index``'s (default: this one's) socket of ``kind``."""
        return str(self.run_dir / f"{kind}-{self.index if index is None else index}.sock")
