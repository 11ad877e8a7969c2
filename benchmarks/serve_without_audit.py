"""`lasthop serve` with the audit path taken out of the Check path: the benchmark's baseline.

Benchmark-only. The server is built exactly as `lasthop serve` builds it; then
the pipeline's audit sink is replaced by one that takes every record and
writes nothing, and receipts are turned off. Lasthop itself has no switch for
this: an operator cannot run it without its trail.

    python benchmarks/serve_without_audit.py --config lasthop.toml
"""

from __future__ import annotations

import asyncio
import logging
import sys

from authz import config
from authz.audit.receipts import Unsigned
from authz.audit.records import Committed, Record
from authz.server.app import build
from authz.server.serve import serve


class DiscardingAudit:
    async def commit(self, record: Record, receipt: Unsigned | None = None) -> Committed:
        return Committed(True)


def main(argv: list[str]) -> int:
    settings = config.load(argv[argv.index("--config") + 1])
    logging.basicConfig(level=logging.WARNING)
    app = build(settings)
    app.pipeline.audit = DiscardingAudit()
    app.pipeline.receipts = None
    return asyncio.run(serve(app))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
