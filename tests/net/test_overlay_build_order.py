"""Within one network map, networks that name their data plane are built before `auto` ones:
the managers coalesce map rebuilds, so a node can learn of an `auto` network and a
`--dataplane userspace` one in the same map, and `auto` must follow the plane asked for rather
than take udp/4789 for the kernel's (the CI failure this guards against: the story test's
userspace network named unbuildable because its node had built ingress on the kernel plane)."""

from __future__ import annotations

from meshkit.net.overlay import _plane_first


def test_explicit_planes_and_sealed_networks_come_before_auto() -> None:
    nets = {
        "a": {"name": "ingress", "dataplane": "auto"},
        "b": {"name": "plain"},  # no dataplane: auto
        "c": {"name": "user", "dataplane": "userspace"},
        "d": {"name": "sealed", "dataplane": "auto", "encrypted": True},
        "e": {"name": "kern", "dataplane": "kernel"},
    }
    order = [k for k, _ in sorted(nets.items(), key=lambda item: _plane_first(item[1]))]
    assert order == ["d", "c", "e", "a", "b"]  # stable within each rank: map order kept


def test_auto_takes_the_plane_the_map_names_when_nothing_is_built() -> None:
    from meshkit.net.overlay import _named_planes

    assert _named_planes({"networks": {"a": {"dataplane": "auto"}, "b": {}}}) == set()
    assert _named_planes(
        {"networks": {"a": {"dataplane": "userspace"}, "b": {"dataplane": "auto"}}}
    ) == {"userspace"}
    assert _named_planes({"networks": {"s": {"encrypted": True, "dataplane": "auto"}}}) == {
        "userspace"
    }
    both = {"networks": {"u": {"dataplane": "userspace"}, "k": {"dataplane": "kernel"}}}
    assert _named_planes(both) == {"userspace", "kernel"}  # no single answer: auto decides
