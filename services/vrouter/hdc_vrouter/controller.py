"""The vrouter controller's behaviour, shared by the REST and gRPC front ends.

Every method validates its input and raises `Problem` (4xx) with a reason; the front ends
only translate. Allocation safety: adding a site locks the overlay row (SELECT ... FOR
UPDATE on PostgreSQL; SQLite serialises writers with BEGIN IMMEDIATE), and a unique
constraint on (overlay, block) makes an overlapping allocation impossible even if that lock
were bypassed; a conflicting transaction is retried, never answered with an overlap.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from hdc_common.bus import Bus
from hdc_common.errors import Problem
from hdc_common.identity import Identity
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from hdc_vrouter import credentials
from hdc_vrouter.addressing import HUB_BLOCK, AddressPlan, bad, find_overlap, parse_private_ranges
from hdc_vrouter.enrolment import cloud_init
from hdc_vrouter.models import EnrolmentToken, Overlay, PrivateRange, Site, Tunnel, utcnow
from hdc_vrouter.settings import VRouterSettings
from hdc_vrouter.topology import TOPOLOGIES, router_config
from hdc_vrouter.validation import validate_endpoint, validate_name
from hdc_vrouter.views import aware, iso, overlay_dict, overlay_view, router_config_for, site_dict
from hdc_vrouter.wgkeys import validate_public_key

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRIES = 20


def not_found(what: str) -> Problem:
    return Problem(404, "Not Found", what)


def conflict(detail: str, **ext: Any) -> Problem:
    return Problem(409, "Conflict", detail, **ext)


def unauthorized(detail: str, **ext: Any) -> Problem:
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"}, **ext)


class Controller:
    def __init__(
        self, sessions: sessionmaker[Session], settings: VRouterSettings, bus: Bus | None = None
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.bus = bus

    def _emit(self, session: Session, entity_event: str, subject: str, **data: Any) -> None:
        """Announce a fact on hdc.events in the same transaction as the change (outbox)."""
        if self.bus is not None:
            self.bus.emit(session, f"vrouter.{entity_event}", data, subject=subject)

    # ---------------------------------------------------------------- plumbing

    def _retrying(self, work: Callable[[Session], T]) -> T:
        """Run `work` in a transaction, retrying when a concurrent writer won the race."""
        delay = 0.005
        for attempt in range(RETRIES):
            try:
                with self.sessions.begin() as session:
                    return work(session)
            except (IntegrityError, OperationalError, StaleDataError) as exc:
                if isinstance(exc, IntegrityError) and not _is_block_race(exc):
                    raise
                if attempt == RETRIES - 1:
                    raise Problem(
                        503,
                        "Service Unavailable",
                        "too many concurrent changes to this overlay; retry",
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
        raise AssertionError("unreachable")

    def _overlay(
        self, session: Session, caller: Identity, overlay_id: str, lock: bool = False
    ) -> Overlay:
        query = sa.select(Overlay).where(Overlay.id == overlay_id)
        if lock:
            query = query.with_for_update()
        overlay = session.execute(query).scalar_one_or_none()
        if overlay is None or not caller.can_see(
            overlay.owner_subject, overlay.owner_issuer, overlay.owner_group
        ):
            raise not_found(f"overlay {overlay_id} does not exist")
        return overlay

    def _site(self, session: Session, overlay: Overlay, site_id: str) -> Site:
        site = session.execute(
            sa.select(Site).where(Site.id == site_id, Site.overlay_id == overlay.id)
        ).scalar_one_or_none()
        if site is None:
            raise not_found(f"site {site_id} is not part of overlay {overlay.id}")
        return site

    def _issue_token(self, session: Session, site: Site) -> tuple[str, datetime]:
        token = credentials.new_enrolment_token()
        expires = utcnow() + timedelta(seconds=self.settings.enrolment_token_ttl_s)
        session.add(
            EnrolmentToken(
                id=str(uuid.uuid4()),
                site_id=site.id,
                token_hash=credentials.digest(token),
                expires_at=expires,
            )
        )
        return token, expires

    # ---------------------------------------------------------------- overlays

    def create_overlay(
        self,
        caller: Identity,
        *,
        name: str,
        cidr: str,
        site_prefix: int = 24,
        topology: str = "hub-and-spoke",
        listen_port: int = 51820,
        persistent_keepalive: int = 25,
        hub_endpoint: str | None = None,
        group: str | None = None,
    ) -> dict[str, Any]:
        name = validate_name(name, "name")
        plan = AddressPlan.build(cidr, site_prefix)
        if topology not in TOPOLOGIES:
            raise bad(f"topology {topology!r} is not one of {', '.join(TOPOLOGIES)}")
        if not 0 < listen_port < 65536:
            raise bad("listen_port must be 1-65535")
        if not 0 <= persistent_keepalive <= 3600:
            raise bad("persistent_keepalive must be 0-3600 seconds")
        endpoint = validate_endpoint(hub_endpoint)
        if group is not None and group not in caller.groups and not caller.is_platform_admin:
            raise Problem(403, "Forbidden", f"you are not a member of group {group!r}")

        with self.sessions.begin() as session:
            overlay = Overlay(
                id=str(uuid.uuid4()),
                name=name,
                cidr=str(plan.cidr),
                site_prefix=site_prefix,
                topology=topology,
                listen_port=listen_port,
                keepalive_s=persistent_keepalive,
                owner_subject=caller.subject,
                owner_issuer=caller.issuer,
                owner_group=group,
                next_index=HUB_BLOCK + 1,
                config_version=1,
            )
            hub = Site(
                id=str(uuid.uuid4()),
                overlay=overlay,
                name="hub",
                role="hub",
                block_index=HUB_BLOCK,
                subnet=str(plan.block(HUB_BLOCK)),
                tunnel_address=plan.hub_address(),
                endpoint=endpoint,
            )
            session.add_all([overlay, hub])
            session.flush()
            self._emit(
                session,
                "overlay.created",
                overlay.id,
                overlay_id=overlay.id,
                name=name,
                cidr=overlay.cidr,
                topology=topology,
            )
            token, expires = self._issue_token(session, hub)
            result = overlay_dict(overlay, [hub], self.settings)
            result["hub"] = site_dict(hub) | {
                "enrolment_token": token,
                "enrolment_token_expires_at": iso(expires),
            }
        log.info("overlay created", extra={"overlay_id": result["id"], "cidr": result["cidr"]})
        return result

    def list_overlays(self, caller: Identity) -> list[dict[str, Any]]:
        with self.sessions() as session:
            rows = session.execute(sa.select(Overlay).order_by(Overlay.created_at)).scalars().all()
            visible = [
                o for o in rows if caller.can_see(o.owner_subject, o.owner_issuer, o.owner_group)
            ]
            return [overlay_dict(o, o.sites, self.settings) for o in visible]

    def get_overlay(self, caller: Identity, overlay_id: str) -> dict[str, Any]:
        with self.sessions() as session:
            overlay = self._overlay(session, caller, overlay_id)
            return overlay_dict(overlay, overlay.sites, self.settings)

    def delete_overlay(self, caller: Identity, overlay_id: str) -> None:
        with self.sessions.begin() as session:
            overlay = self._overlay(session, caller, overlay_id, lock=True)
            session.delete(overlay)
            self._emit(session, "overlay.deleted", overlay_id, overlay_id=overlay_id)

    # ---------------------------------------------------------------- sites

    def add_site(
        self,
        caller: Identity,
        overlay_id: str,
        *,
        name: str,
        private_ranges: list[str] | None = None,
        nat: bool = False,
        endpoint: str | None = None,
    ) -> dict[str, Any]:
        name = validate_name(name, "name")
        if name == "hub":
            raise bad("'hub' is the name of the overlay's central point; pick another site name")
        endpoint = validate_endpoint(endpoint)
        requested = list(private_ranges or [])

        def allocate(session: Session) -> dict[str, Any]:
            overlay = self._overlay(session, caller, overlay_id, lock=True)
            plan = AddressPlan.build(overlay.cidr, overlay.site_prefix)
            ranges = parse_private_ranges(requested, plan)
            if session.scalar(
                sa.select(sa.func.count()).where(Site.overlay_id == overlay.id, Site.name == name)
            ):
                raise conflict(f"overlay {overlay.id} already has a site named {name!r}")
            if ranges:
                taken: dict[str, list[str]] = {}
                for site_name, cidr in session.execute(
                    sa.select(Site.name, PrivateRange.cidr)
                    .join(PrivateRange, PrivateRange.site_id == Site.id)
                    .where(PrivateRange.overlay_id == overlay.id)
                ):
                    taken.setdefault(site_name, []).append(cidr)
                clash = find_overlap(ranges, taken)
                if clash:
                    raise conflict(
                        f"private range {clash[0]} overlaps {clash[2]} of site {clash[1]!r}; "
                        "sites joined by one overlay need disjoint ranges",
                        reason="range_overlap",
                        conflicting_site=clash[1],
                        conflicting_range=clash[2],
                    )
            index = self._free_block(session, overlay, plan)
            site = Site(
                id=str(uuid.uuid4()),
                overlay_id=overlay.id,
                name=name,
                role="site",
                block_index=index,
                subnet=str(plan.block(index)),
                tunnel_address=plan.router_address(index),
                nat=nat,
                endpoint=endpoint,
                ranges=[PrivateRange(overlay_id=overlay.id, cidr=str(r)) for r in ranges],
            )
            session.add(site)
            overlay.next_index = index + 1
            overlay.config_version += 1
            session.flush()
            self._emit(
                session,
                "site.added",
                site.id,
                overlay_id=overlay.id,
                site_id=site.id,
                name=name,
                subnet=site.subnet,
                private_ranges=[str(r) for r in ranges],
            )
            token, expires = self._issue_token(session, site)
            return site_dict(site) | {
                "enrolment_token": token,
                "enrolment_token_expires_at": iso(expires),
            }

        return self._retrying(allocate)

    def _free_block(self, session: Session, overlay: Overlay, plan: AddressPlan) -> int:
        limit = min(plan.block_count, self.settings.max_sites_per_overlay + 1)
        candidate = overlay.next_index
        if 0 < candidate < limit and not session.scalar(
            sa.select(Site.id).where(Site.overlay_id == overlay.id, Site.block_index == candidate)
        ):
            return candidate
        # The hint is used up or taken: find the lowest gap after any allocated block
        # (block 0 always belongs to the hub, so every gap follows some allocated block).
        other = aliased(Site)
        gap = session.scalar(
            sa.select(sa.func.min(Site.block_index + 1)).where(
                Site.overlay_id == overlay.id,
                Site.block_index + 1 < limit,
                ~sa.exists().where(
                    other.overlay_id == overlay.id, other.block_index == Site.block_index + 1
                ),
            )
        )
        if gap is None:
            raise conflict(
                f"address pool exhausted: overlay {overlay.cidr} holds {limit - 1} site blocks "
                f"of /{overlay.site_prefix} and all are allocated",
                reason="pool_exhausted",
                capacity=limit - 1,
            )
        return int(gap)

    def list_sites(self, caller: Identity, overlay_id: str) -> list[dict[str, Any]]:
        with self.sessions() as session:
            overlay = self._overlay(session, caller, overlay_id)
            return [site_dict(s) for s in sorted(overlay.sites, key=lambda s: s.block_index)]

    def get_site(self, caller: Identity, overlay_id: str, site_id: str) -> dict[str, Any]:
        with self.sessions() as session:
            overlay = self._overlay(session, caller, overlay_id)
            return site_dict(self._site(session, overlay, site_id))

    def remove_site(self, caller: Identity, overlay_id: str, site_id: str) -> None:
        def remove(session: Session) -> None:
            overlay = self._overlay(session, caller, overlay_id, lock=True)
            site = self._site(session, overlay, site_id)
            if site.role == "hub":
                raise conflict(
                    "the hub cannot be removed from its overlay; delete the overlay instead"
                )
            session.delete(site)
            overlay.config_version += 1
            self._emit(
                session,
                "site.removed",
                site_id,
                overlay_id=overlay.id,
                site_id=site_id,
                name=site.name,
            )

        self._retrying(remove)
        log.info("site removed", extra={"overlay_id": overlay_id, "site_id": site_id})

    def new_enrolment_token(
        self, caller: Identity, overlay_id: str, site_id: str
    ) -> dict[str, Any]:
        """A fresh one-time token, e.g. to re-enrol a router whose machine was replaced."""
        with self.sessions.begin() as session:
            overlay = self._overlay(session, caller, overlay_id)
            site = self._site(session, overlay, site_id)
            token, expires = self._issue_token(session, site)
            return {
                "site_id": site.id,
                "enrolment_token": token,
                "enrolment_token_expires_at": iso(expires),
            }

    def router_user_data(
        self,
        caller: Identity,
        overlay_id: str,
        site_id: str,
        *,
        endpoint: str | None = None,
        interface: str = "hdcvr0",
    ) -> dict[str, Any]:
        """The cloud-init user data that makes a fresh VM this site's (or the hub's) router,
        with a new one-time token inside: what the orchestrator/IM put in the router VM."""
        endpoint = validate_endpoint(endpoint)
        with self.sessions.begin() as session:
            overlay = self._overlay(session, caller, overlay_id)
            site = self._site(session, overlay, site_id)
            if site.role == "hub" and not (endpoint or site.endpoint):
                raise bad("the hub's public endpoint (host:port) is needed so sites can reach it")
            token, expires = self._issue_token(session, site)
            try:
                user_data = cloud_init(
                    self.settings.agent_url(),
                    token,
                    role=site.role,
                    endpoint=endpoint or (site.endpoint if site.role == "hub" else None),
                    interface=interface,
                    agent_requirement=self.settings.agent_requirement,
                    pip_index_url=self.settings.agent_pip_index_url or None,
                )
            except ValueError as exc:
                raise bad(str(exc)) from None
            return {
                "site_id": site.id,
                "role": site.role,
                "user_data": user_data,
                "enrolment_token_expires_at": iso(expires),
            }

    def request_rotation(self, caller: Identity, overlay_id: str, site_id: str) -> dict[str, Any]:
        def mark(session: Session) -> dict[str, Any]:
            overlay = self._overlay(session, caller, overlay_id, lock=True)
            site = self._site(session, overlay, site_id)
            if not site.public_key:
                raise conflict(
                    f"site {site.name!r} has not enrolled yet; there is no key to rotate"
                )
            site.rotation_requested = True
            overlay.config_version += 1
            session.flush()
            return site_dict(site)

        return self._retrying(mark)

    def site_config(self, caller: Identity, overlay_id: str, site_id: str) -> dict[str, Any]:
        with self.sessions() as session:
            overlay = self._overlay(session, caller, overlay_id)
            return router_config_for(overlay, self._site(session, overlay, site_id))

    # ---------------------------------------------------------------- health

    def health(self, caller: Identity, overlay_id: str) -> dict[str, Any]:
        now = utcnow()
        with self.sessions() as session:
            overlay = self._overlay(session, caller, overlay_id)
            sites = sorted(overlay.sites, key=lambda s: s.block_index)
            view = overlay_view(overlay, sites)
            reports = {
                (t.site_id, t.peer_public_key): t
                for t in session.execute(
                    sa.select(Tunnel)
                    .join(Site, Site.id == Tunnel.site_id)
                    .where(Site.overlay_id == overlay.id)
                ).scalars()
            }
            out = []
            for site, router in zip(sites, view.routers, strict=True):
                status = self._status(site, now)
                tunnels = []
                for peer in router_config(view, router)["peers"] if site.public_key else []:
                    report = reports.get((site.id, peer["public_key"]))
                    handshake = aware(report.latest_handshake) if report else None
                    fresh = (
                        handshake is not None
                        and (now - handshake).total_seconds() < self.settings.handshake_timeout_s
                    )
                    tunnels.append(
                        {
                            "peer_site_id": peer["site_id"],
                            "peer_name": peer["name"],
                            "state": "up" if status == "online" and fresh else "down",
                            "latest_handshake": iso(handshake),
                            "rx_bytes": report.rx_bytes if report else 0,
                            "tx_bytes": report.tx_bytes if report else 0,
                            "endpoint": report.endpoint if report else None,
                        }
                    )
                out.append(
                    {
                        "site_id": site.id,
                        "name": site.name,
                        "role": site.role,
                        "status": status,
                        "last_heartbeat": iso(site.last_heartbeat_at),
                        "config_version_applied": site.applied_config_version,
                        "config_current": site.applied_config_version == overlay.config_version,
                        "tunnels": tunnels,
                    }
                )
            up = sum(1 for s in out for t in s["tunnels"] if t["state"] == "up")
            total = sum(len(s["tunnels"]) for s in out)
            return {
                "overlay_id": overlay.id,
                "tunnels_up": up,
                "tunnels_total": total,
                "sites": out,
            }

    def _status(self, site: Site, now: datetime) -> str:
        if not site.public_key:
            return "pending"
        beat = aware(site.last_heartbeat_at)
        if beat is None or (now - beat).total_seconds() > self.settings.heartbeat_timeout_s:
            return "offline"
        return "online"

    # ---------------------------------------------------------------- agents

    def enrol(self, token: str, public_key: str, endpoint: str | None = None) -> dict[str, Any]:
        if not isinstance(token, str) or not token:
            raise bad("token is required")
        key = validate_public_key(public_key)
        endpoint = validate_endpoint(endpoint)
        secret = credentials.new_agent_secret()

        def consume(session: Session) -> dict[str, Any]:
            row = session.execute(
                sa.select(EnrolmentToken).where(
                    EnrolmentToken.token_hash == credentials.digest(token)
                )
            ).scalar_one_or_none()
            if row is None:
                raise unauthorized("unknown enrolment token", reason="token_unknown")
            if row.used_at is not None:
                raise conflict(
                    f"enrolment token was already used at {iso(row.used_at)}; tokens are single-use, "
                    "ask the operator for a new one",
                    reason="token_used",
                )
            if aware(row.expires_at) <= utcnow():
                raise unauthorized(
                    f"enrolment token expired at {iso(row.expires_at)}", reason="token_expired"
                )
            # Conditional update: of two agents racing with one token, exactly one wins.
            won = session.execute(
                sa.update(EnrolmentToken)
                .where(EnrolmentToken.id == row.id, EnrolmentToken.used_at.is_(None))
                .values(used_at=utcnow())
                .execution_options(synchronize_session=False)
            ).rowcount
            if won != 1:
                raise conflict(
                    "enrolment token was already used; tokens are single-use", reason="token_used"
                )
            site = session.get(Site, row.site_id)
            overlay = session.execute(
                sa.select(Overlay).where(Overlay.id == site.overlay_id).with_for_update()
            ).scalar_one()
            self._check_key_free(session, overlay, site, key)
            site.public_key = key
            site.agent_secret_hash = credentials.digest(secret)
            site.enrolled_at = utcnow()
            site.rotation_requested = False
            if endpoint:
                site.endpoint = endpoint
            overlay.config_version += 1
            session.flush()
            self._emit(
                session,
                "router.enrolled",
                site.id,
                overlay_id=overlay.id,
                site_id=site.id,
                role=site.role,
            )
            return {
                "site_id": site.id,
                "overlay_id": overlay.id,
                "agent_secret": secret,
                "config": router_config_for(overlay, site),
            }

        result = self._retrying(consume)
        log.info(
            "router enrolled",
            extra={"site_id": result["site_id"], "overlay_id": result["overlay_id"]},
        )
        return result

    def _check_key_free(self, session: Session, overlay: Overlay, site: Site, key: str) -> None:
        holder = session.scalar(
            sa.select(Site.name).where(
                Site.overlay_id == overlay.id, Site.public_key == key, Site.id != site.id
            )
        )
        if holder:
            raise conflict(
                f"public key is already registered by site {holder!r}; every router needs its own key"
            )

    def _agent_site(self, session: Session, secret: str | None) -> Site:
        if not secret:
            raise unauthorized(
                "agent credential missing: send 'Authorization: Bearer <agent secret>'"
            )
        site = session.execute(
            sa.select(Site).where(Site.agent_secret_hash == credentials.digest(secret))
        ).scalar_one_or_none()
        if site is None:
            raise unauthorized(
                "unknown agent credential: the site was removed or enrolled again elsewhere"
            )
        return site

    def agent_config(self, secret: str | None) -> dict[str, Any]:
        with self.sessions() as session:
            site = self._agent_site(session, secret)
            return router_config_for(site.overlay, site)

    def agent_rotate_key(self, secret: str | None, public_key: str) -> dict[str, Any]:
        key = validate_public_key(public_key)

        def rotate(session: Session) -> dict[str, Any]:
            site = self._agent_site(session, secret)
            overlay = session.execute(
                sa.select(Overlay).where(Overlay.id == site.overlay_id).with_for_update()
            ).scalar_one()
            if key == site.public_key:
                raise conflict(
                    "the new public key equals the current one; generate a fresh key pair"
                )
            self._check_key_free(session, overlay, site, key)
            site.public_key = key
            site.rotation_requested = False
            site.key_rotated_at = utcnow()
            overlay.config_version += 1
            session.flush()
            self._emit(
                session, "router.key_rotated", site.id, overlay_id=overlay.id, site_id=site.id
            )
            return router_config_for(overlay, site)

        result = self._retrying(rotate)
        log.info("router key rotated", extra={"site_id": result["site_id"]})
        return result

    def heartbeat(
        self, secret: str | None, peers: list[dict[str, Any]], config_version: int | None = None
    ) -> dict[str, Any]:
        if not isinstance(peers, list):
            raise bad("peers must be a list")
        if config_version is not None and (
            not isinstance(config_version, int) or config_version < -1
        ):
            raise bad("config_version must be an integer")
        parsed = []
        for i, peer in enumerate(peers):
            try:
                key = validate_public_key(peer.get("public_key"))
            except Problem as exc:
                raise bad(f"peers[{i}]: {exc.detail}") from None
            handshake = peer.get("latest_handshake") or 0
            rx, tx = peer.get("rx_bytes", 0), peer.get("tx_bytes", 0)
            if not all(isinstance(v, int) and v >= 0 for v in (handshake, rx, tx)):
                raise bad(
                    f"peers[{i}]: latest_handshake, rx_bytes and tx_bytes must be non-negative integers"
                )
            when = datetime.fromtimestamp(handshake, UTC) if handshake else None
            parsed.append((key, when, rx, tx, peer.get("endpoint")))

        def record(session: Session) -> dict[str, Any]:
            site = self._agent_site(session, secret)
            now = utcnow()
            site.last_heartbeat_at = now
            if config_version is not None:
                site.applied_config_version = config_version
            if not site.online:
                site.online = True
                self._emit(
                    session, "router.online", site.id, overlay_id=site.overlay_id, site_id=site.id
                )
            self._announce_tunnel_changes(session, site, parsed, now)
            session.execute(sa.delete(Tunnel).where(Tunnel.site_id == site.id))
            for key, when, rx, tx, endpoint in parsed:
                session.add(
                    Tunnel(
                        site_id=site.id,
                        peer_public_key=key,
                        latest_handshake=when,
                        rx_bytes=rx,
                        tx_bytes=tx,
                        endpoint=str(endpoint)[:300] if endpoint else None,
                        updated_at=now,
                    )
                )
            seen = {key: str(ep)[:300] for key, _, _, _, ep in parsed if ep}
            if seen:
                for peer in session.execute(
                    sa.select(Site).where(
                        Site.overlay_id == site.overlay_id, Site.public_key.in_(list(seen))
                    )
                ).scalars():
                    if peer.observed_endpoint != seen[peer.public_key]:
                        peer.observed_endpoint = seen[peer.public_key]
            return {
                "config_version": site.overlay.config_version,
                "rotate_key": site.rotation_requested,
            }

        return self._retrying(record)

    def _fresh(self, handshake: datetime | None, now: datetime) -> bool:
        handshake = aware(handshake)
        return (
            handshake is not None
            and (now - handshake).total_seconds() < self.settings.handshake_timeout_s
        )

    def _announce_tunnel_changes(
        self, session: Session, site: Site, parsed: list, now: datetime
    ) -> None:
        if self.bus is None:
            return
        before = {
            t.peer_public_key: self._fresh(t.latest_handshake, now)
            for t in session.execute(sa.select(Tunnel).where(Tunnel.site_id == site.id)).scalars()
        }
        after = {key: self._fresh(when, now) for key, when, _, _, _ in parsed}
        changed = {
            k: after.get(k, False)
            for k in before.keys() | after.keys()
            if before.get(k, False) != after.get(k, False)
        }
        if not changed:
            return
        peers = dict(
            session.execute(
                sa.select(Site.public_key, Site.id).where(
                    Site.overlay_id == site.overlay_id, Site.public_key.in_(list(changed))
                )
            ).all()
        )
        for key, up in sorted(changed.items()):
            self._emit(
                session,
                "tunnel.up" if up else "tunnel.down",
                site.id,
                overlay_id=site.overlay_id,
                site_id=site.id,
                peer_site_id=peers.get(key),
                peer_public_key=key,
            )

    def sweep_offline(self) -> int:
        """Mark routers whose heartbeats stopped offline (once each) and announce it."""
        cutoff = utcnow() - timedelta(seconds=self.settings.heartbeat_timeout_s)
        with self.sessions.begin() as session:
            stale = (
                session.execute(
                    sa.select(Site)
                    .where(Site.online.is_(True), Site.last_heartbeat_at < cutoff)
                    .with_for_update(skip_locked=True)
                )
                .scalars()
                .all()
            )
            for site in stale:
                site.online = False
                self._emit(
                    session, "router.offline", site.id, overlay_id=site.overlay_id, site_id=site.id
                )
            return len(stale)


def _is_block_race(exc: IntegrityError) -> bool:
    """Only a lost race for a block, name or key is worth retrying (the retry then answers
    409 or succeeds); other violations are bugs."""
    text = str(exc.orig).lower()
    # PostgreSQL names the constraint; SQLite names the columns.
    markers = ("uq_vr_sites_", "vr_sites.block_index", "vr_sites.name", "vr_sites.public_key")
    return any(m in text for m in markers)
