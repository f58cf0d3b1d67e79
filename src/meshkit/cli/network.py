"""`meshkit network` commands: flags in, Docker's tables out; the networks live on the managers.

Every command asks the local agent over its Unix socket (`--host`, MESHKIT_HOST), which must be
a manager. Flags are checked here and named in errors before anything is sent.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from meshkit.base.errors import FlagError
from meshkit.cli.node import FormatOpt, HostOpt, IdsOnlyOpt, check_format, print_listing
from meshkit.cli.node import agent_call as _call

network_app = typer.Typer(
    name="network",
    help="Overlay networks: VXLAN segments between the nodes, with addresses for tasks.",
    no_args_is_help=True,
)

LS_HEADERS = ["NETWORK ID", "NAME", "DRIVER", "SCOPE", "ATTACHABLE"]


def parse_opts(opts: list[str]) -> dict[str, Any]:
    """`--opt K=V` driver options: `mtu` (Docker's com.docker.network.driver.mtu is taken as
    the same) and `encrypted` (Docker's spelling, alone or =true/false: frames between nodes
    sealed with AES-256-GCM or ChaCha20-Poly1305 by the userspace data plane)."""
    out: dict[str, Any] = {}
    for text in opts:
        key, sep, value = text.partition("=")
        if key == "encrypted":
            if value.lower() not in ("", "true", "1", "yes", "false", "0", "no") or (
                sep and not value
            ):
                raise FlagError("--opt", text, "encrypted takes no value, or true/false")
            out["encrypted"] = value.lower() in ("", "true", "1", "yes")
            continue
        if not sep:
            raise FlagError("--opt", text, "expected KEY=VALUE (or encrypted)")
        if key in ("mtu", "com.docker.network.driver.mtu"):
            try:
                out["mtu"] = int(value)
            except ValueError:
                raise FlagError("--opt", text, "mtu must be a whole number of bytes") from None
            if not 576 <= out["mtu"] <= 65485:
                raise FlagError("--opt", text, "mtu must be from 576 to 65485")
        else:
            raise FlagError(
                "--opt", text, f"unknown option {key!r}: the overlay driver knows mtu, encrypted"
            )
    return out


def parse_labels(labels: list[str]) -> dict[str, str]:
    out = {}
    for text in labels:
        key, _, value = text.partition("=")
        if not key:
            raise FlagError("--label", text, "expected KEY=VALUE")
        out[key] = value
    return out


@network_app.command()
def create(
    name: Annotated[str, typer.Argument(help="The network's name.")],
    driver: Annotated[str, typer.Option("--driver", "-d", help="overlay.")] = "overlay",
    subnet: Annotated[
        str | None, typer.Option(help="CIDR; default: the next free one of the address pools.")
    ] = None,
    gateway: Annotated[str | None, typer.Option(help="Gateway address in the subnet.")] = None,
    opt: Annotated[
        list[str] | None,
        typer.Option("--opt", "-o", help="Driver option: mtu=N, encrypted (userspace plane)."),
    ] = None,
    dataplane: Annotated[
        str, typer.Option(help="auto, kernel or userspace: who carries the VXLAN packets.")
    ] = "auto",
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE.")] = None,
    internal: Annotated[
        bool,
        typer.Option(
            "--internal",
            help="No way out: tasks get no gateway interface for this network (as Docker's).",
        ),
    ] = False,
    attachable: Annotated[
        bool,
        typer.Option(
            "--attachable", help="One-off tasks may join it: `meshkit run --network NAME`."
        ),
    ] = False,
    host: HostOpt = None,
) -> None:
    """Create an overlay network (prints its ID)."""
    if driver != "overlay":
        raise FlagError("--driver", driver, "only the overlay driver exists in meshkit")
    if dataplane not in ("auto", "kernel", "userspace"):
        raise FlagError("--dataplane", dataplane, "expected auto, kernel or userspace")
    if gateway and not subnet:
        raise FlagError("--gateway", gateway, "a gateway needs a --subnet")
    if subnet:
        from meshkit.net import ipam

        try:
            ipam.parse_subnet(subnet)
            ipam.check_gateway(subnet, gateway)
        except ipam.IpamError as exc:
            if gateway and "gateway" in str(exc):
                raise FlagError("--gateway", gateway, str(exc)) from None
            raise FlagError("--subnet", subnet, str(exc)) from None
    params: dict[str, Any] = {
        "name": name,
        "driver": driver,
        "subnet": subnet or "",
        "gateway": gateway or "",
        "dataplane": dataplane,
        "labels": parse_labels(label or []),
        **parse_opts(opt or []),
    }
    if params.get("encrypted") and dataplane == "kernel":
        why = "an encrypted network runs on the userspace data plane (the kernel's VXLAN "
        raise FlagError("--dataplane", dataplane, why + "cannot seal): use auto or userspace")
    if internal:
        params["internal"] = True
    if attachable:
        params["attachable"] = True
    reply = _call(host, "network_create", params)
    typer.echo(reply["id"])


@network_app.command("ls")
def ls(
    fmt: FormatOpt = "table",
    quiet: IdsOnlyOpt = False,
    host: HostOpt = None,
) -> None:
    """List networks: NETWORK ID, NAME, DRIVER, SCOPE."""
    check_format(fmt)  # before asking the agent
    nets = _call(host, "network_ls")["networks"]
    print_listing(
        nets,
        fmt,
        quiet,
        LS_HEADERS,
        lambda n: [
            n["ID"][:12],
            n["Name"],
            n["Driver"],
            n["Scope"],
            str(bool(n.get("Attachable"))).lower(),
        ],
    )


@network_app.command()
def inspect(
    networks: Annotated[list[str], typer.Argument(help="Network names or ids.")],
    host: HostOpt = None,
) -> None:
    """Show networks in detail, as JSON (subnet, VNI, MTU, each node's data plane)."""
    views = [_call(host, "network_inspect", {"network": n}) for n in networks]
    typer.echo(json.dumps(views, indent=4))


@network_app.command()
def rm(
    networks: Annotated[list[str], typer.Argument(help="Network names or ids.")],
    host: HostOpt = None,
) -> None:
    """Remove networks (refused while a service or task uses one)."""
    for ref in networks:
        _call(host, "network_rm", {"network": ref})
        typer.echo(ref)


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the facts as JSON.")] = False,
    host: HostOpt = None,
) -> None:
    """Check the kernel and the overlay: what this kernel can build, which data plane is used,
    and, by node pair, whether the control plane and VXLAN get through, with the path MTU."""
    from meshkit.net import doctor_report, kernelcheck

    checks = kernelcheck.check_kernel()
    try:
        plane, why = kernelcheck.choose_dataplane(checks, "auto")
        dataplane = f"{plane} ({why})"
    except Exception as exc:
        dataplane = f"none: {exc}"
    missing = kernelcheck.missing_words(checks)
    pairs: list[dict[str, Any]] = []
    errors: list[str] = []
    gateways: list[tuple[str, dict[str, Any] | None]] = []
    vip_paths: list[str] = []  # node: nft | relay | ports (meshkit.mesh.vipports)
    note = ""
    try:
        info = _call(host, "info")
    except Exception as exc:  # no agent here: the kernel half still helps
        info = None
        note = f"No meshkit agent answers here ({exc}); only the kernel was checked."
    store = ""
    if info is not None:
        if info.get("role") == "manager":
            from meshkit.cli.storeflags import store_line

            store = store_line(_call(host, "cluster_status"))
            reply = _call(host, "overlay_pairs")
            pairs = list(reply["pairs"])
            for node in sorted(reply["nodes"].values(), key=lambda n: n["hostname"]):
                for _net_id, error in sorted(((node["overlay"] or {}).get("errors") or {}).items()):
                    errors.append(f"{node['hostname'] or node['addr']}: {error}")
                gateways.append(
                    (node["hostname"] or node["addr"], (node["overlay"] or {}).get("gateway"))
                )
                path = (node["overlay"] or {}).get("vip_ports", "-")
                vip_paths.append(f"{node['hostname'] or node['addr']}: {path}")
        else:
            pairs = own_pairs(info)
            for _net_id, error in sorted(((info.get("overlay") or {}).get("errors") or {}).items()):
                errors.append(f"{info.get('hostname')}: {error}")
            gateways.append(
                (str(info.get("hostname") or ""), (info.get("overlay") or {}).get("gateway"))
            )
            note = "This node is a worker: only its own probes are shown (run doctor on a "
            note += "manager for every pair)."
    if as_json:
        out = doctor_report.doctor_json(pairs, checks, dataplane=dataplane)
        out["missing"] = missing
        out["network_errors"] = errors
        out["gateways"] = {name: gw for name, gw in gateways}
        out["vip_ports_by_node"] = vip_paths
        out["ok"] = bool(out["ok"]) and not errors
        out["ok"] = out["ok"] and all(gw is None or gw.get("ok") for _n, gw in gateways)
        if info is not None:
            out["stats"] = info.get("overlay_stats") or {}
            out["encryption"] = doctor_report.encryption_report(out["stats"])
            out["mesh"] = info.get("mesh") or {}
            out["ok"] = bool(out["ok"]) and not mesh_problems(out["mesh"])
        if note:
            out["note"] = note
        if store:
            out["store"] = store
        out["cgroups"] = _cgroups().to_dict()  # task resource limits (v1 or v2, controllers)
        typer.echo(json.dumps(out, indent=4))
        return
    text = doctor_report.render_doctor(pairs, checks, dataplane=dataplane)
    if missing:
        text += "\n" + "\n".join(missing) + "\n"
    if errors:
        text += "\nNetworks a node could not build:\n" + "\n".join(errors) + "\n"
    if gateways:
        text += "\nGateway (tasks' outbound access):\n" + doctor_report.gateway_table(gateways)
        text += "\n"
    if info is not None:
        text += doctor_report.encryption_text(info.get("overlay_stats") or {})
        text += mesh_text(info.get("mesh") or {})
    if vip_paths:
        text += "\nVIPs on every port, by node: " + ", ".join(vip_paths) + "\n"
    text += f"\nTask resource limits: {_cgroups().describe()}\n"
    if store:
        text += f"\n{store}\n"
    if note:
        text += "\n" + note + "\n"
    typer.echo(text, nl=False)


def _cgroups() -> Any:
    """This host's cgroup setup (meshkit.cluster.tasks.cgroups.CgroupSetup)."""
    from meshkit.cluster.tasks.cgroups import host_setup

    return host_setup()


def mesh_problems(mesh: dict[str, Any]) -> list[str]:
    """What keeps this node's VIPs, published ports or task DNS servers from working."""
    out = [f"{r['key']}: {r['error']}" for r in mesh.get("relays") or [] if r.get("error")]
    out += [f"DNS of task {t}: {e}" for t, e in sorted((mesh.get("dns_errors") or {}).items())]
    out += list((mesh.get("conflicts") or {}).values())
    out += [f"VIPs on every port in {ns}: {e}" for ns, e in
            sorted(((mesh.get("vip_ports") or {}).get("errors") or {}).items())]  # fmt: skip
    return out


def mesh_text(mesh: dict[str, Any]) -> str:
    """This node's relays (VIPs and published ports) as a table, then what is wrong."""
    from meshkit.base.table import table

    relays = [r for r in mesh.get("relays") or [] if not r.get("error")]
    text = ""
    if relays:
        rows = [
            [
                r.get("service", ""),
                r.get("kind", "") + (f" ({r['path']})" if r.get("path") else ""),
                ", ".join(r.get("listen") or []),
                f"{r.get('up', 0)}/{len(r.get('backends') or [])}",
                str(r.get("flows", 0)) if "flows_total" not in r else f"{r['flows_total']} total",
            ]
            for r in relays
        ]
        text += "\nService mesh on this node:\n"
        text += table(["SERVICE", "KIND", "LISTEN", "TASKS UP", "FLOWS"], rows) + "\n"
    vp = mesh.get("vip_ports") or {}
    if vp:
        text += f"\nVIPs on every port on this node: {vp.get('path')} ({vp.get('why') or '-'})\n"
    problems = mesh_problems(mesh)
    if problems:
        text += "\nService mesh problems:\n" + "\n".join(problems) + "\n"
    return text


def own_pairs(info: dict[str, Any]) -> list[dict[str, Any]]:
    """Pair rows from this node's own overlay report (a worker has no cluster state)."""
    from meshkit.net.verdict import verdict

    nodes = info.get("overlay_nodes") or {}
    report = info.get("overlay") or {}
    rows = []
    for peer_id, facts in sorted((report.get("peers") or {}).items()):
        peer = nodes.get(peer_id) or {}
        target = str(peer.get("addr") or peer_id[:12])
        row = {
            "source": info.get("addr", ""),
            "source_id": info.get("node_id", ""),
            "target": target,
            "target_id": peer_id,
            "control": facts.get("control"),
            "vxlan": facts.get("vxlan"),
            "mtu": facts.get("mtu"),
            "overlay_mtu": facts.get("overlay_mtu"),
            "network": facts.get("network", ""),
        }
        row["verdict"] = verdict(
            source=row["source"],
            target=target,
            control=row["control"],
            vxlan=row["vxlan"],
            path_mtu=row["mtu"],
            overlay_mtu=row["overlay_mtu"],
            dataplane=str(report.get("dataplane") or ""),
        )
        rows.append(row)
    return rows
