"""The ingress's /metrics: per-backend gauges and counters from the connection tables, the
relay's live byte counts and the UDP flows, served over a minimal HTTP/1.x exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from meshkit.l4.metrics import MetricFamily, metrics_response, render

if TYPE_CHECKING:
    from meshkit.l4.listeners import Listener, TcpFlow
    from meshkit.l4.relay import RelayLike


class IngressMetrics:
    """The metrics part of ``Ingress`` (a mixin: it reads the ingress's own state)."""

    relay: RelayLike
    listeners: list[Listener]
    pairs: dict[int, TcpFlow]
    no_backend: int

    async def serve_metrics(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            asyncio.TimeoutError,
            ConnectionError,
        ):
            head = b""
        writer.write(metrics_response(head, render(self.metric_families())))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def metric_families(self) -> list[MetricFamily]:
        live: dict[tuple[Listener, int], int] = {}
        for pair, flow in self.pairs.items():
            st = self.relay.stats(pair)
            if st is not None:
                k = (flow.listener, flow.bid)
                live[k] = live.get(k, 0) + st[0] + st[1]
        for lst in self.listeners:
            if lst.publish.proto == "tcp":
                for bid, nbytes in self.relay.live_bytes(lst.table).items():
                    live[(lst, bid)] = live.get((lst, bid), 0) + nbytes
            for udp in lst.udp_flows.values():
                live[(lst, udp.bid)] = live.get((lst, udp.bid), 0) + udp.bytes
        fams = {
            "up": MetricFamily(
                "meshkit_ingress_backend_up", "1 when the backend is healthy.", "gauge", []
            ),
            "active": MetricFamily(
                "meshkit_ingress_flows_active", "Open flows per backend.", "gauge", []
            ),
            "total": MetricFamily(
                "meshkit_ingress_flows_total", "Flows sent to a backend.", "counter", []
            ),
            "bytes": MetricFamily(
                "meshkit_ingress_bytes_total", "Bytes relayed both ways per backend.", "counter", []
            ),
            "fail": MetricFamily(
                "meshkit_ingress_connect_failures_total",
                "Failed connects and passive failures per backend.",
                "counter",
                [],
            ),
        }
        for lst in self.listeners:
            for bid, ep in sorted(lst.by_id.items(), key=lambda kv: kv[1].name):
                labels = {"listener": lst.name, "backend": ep.name}
                active, total, nbytes = lst.table.stats(bid)
                fams["up"].samples.append((labels, 1 if lst.table.is_up(bid) else 0))
                fams["active"].samples.append((labels, active))
                fams["total"].samples.append((labels, total))
                fams["bytes"].samples.append((labels, nbytes + live.get((lst, bid), 0)))
                fams["fail"].samples.append((labels, ep.connect_failures))
        nob = MetricFamily(
            "meshkit_ingress_no_backend_total",
            "Flows refused because no backend was up.",
            "counter",
            [({}, self.no_backend)],
        )
        return [*fams.values(), nob]
