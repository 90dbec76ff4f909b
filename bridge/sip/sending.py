"""Where the user agent's requests go: to the registrar/outbound proxy, resolved (RFC 3263), or
to a dialog's next hop; and from that, which addresses may send requests in a dialog (its
peers). A connection of ours to the PBX that drops makes the registration check at once."""

from __future__ import annotations

import contextlib
import logging

from ..inet import Addr
from ..logsafe import safe
from .clienttransaction import ClientTransaction
from .dialog import Dialog
from .message import Request, SipParseError
from .resolver import ResolveError
from .uri import SipUri, hostport, is_ip

log = logging.getLogger("bridge.sip")       # the user agent's, as its log lines always said


class Sending:
    """Where requests go, and who may send them in a dialog (a part of `UserAgent`)."""

    async def proxy_addresses(self) -> list[Addr]:
        """The registrar/outbound proxy, resolved (RFC 3263), the last failed one last."""
        found = await self.resolver.resolve(self.cfg.registrar_host, self.cfg.registrar_port, self.cfg.transport)
        if set(found) != set(self._proxy):
            self._proxy = found
            self.policy.set_pbx(host for host, _ in found)
        return list(self._proxy)

    def proxy_failed(self, dest: Addr | None = None) -> None:
        """A request to the proxy got no answer: resolve again next time, and check the registration."""
        self.resolver.forget(self.cfg.registrar_host)
        if dest in self._proxy and len(self._proxy) > 1:
            self._proxy.remove(dest)
            self._proxy.append(dest)
        self.registrar.check_now()

    async def next_hop(self, dialog: Dialog) -> Addr:
        """The first route (or the remote target), resolved for our one transport (its default port)."""
        uri = dialog.next_hop()
        found = await self.resolver.resolve(uri.host, uri.port, self.cfg.transport)
        return found[0]

    def _connection_closed(self, addr: Addr) -> None:
        """A TCP/TLS connection of ours closed: if it went to the PBX, check the registration now."""
        if addr in self._proxy:
            log.info("SIP: the %s connection to the PBX at %s closed; checking the registration",
                     self.transport.name, hostport(*addr))
            self.registrar.check_now()

    def _connection_failed(self, addr: Addr) -> None:
        self.layer.transport_failed(addr)

    async def send_in_dialog(self, dialog: Dialog, request: Request) -> ClientTransaction | None:
        """Send a request inside `dialog`; None (logged) if its next hop cannot be reached."""
        try:
            dest = await self.next_hop(dialog)
        except (ResolveError, SipParseError) as exc:
            log.warning("call %s: cannot send %s: %s", dialog.call_id, request.method, safe(exc))
            return None
        if request.method == "INVITE":
            return self.layer.invite(request, dest)
        return self.layer.request(request, dest)

    async def send_ack(self, dialog: Dialog, ack: Request) -> tuple[bytes, Addr] | None:
        """ACK a 2xx (no transaction: RFC 3261 13.2.2.4); returns what was sent, and where."""
        try:
            dest = await self.next_hop(dialog)
        except (ResolveError, SipParseError) as exc:
            log.warning("call %s: cannot send ACK: %s", dialog.call_id, safe(exc))
            return None
        data = ack.render()
        self.transport.send(data, dest)
        return data, dest

    def add_peers(self, dialog: Dialog) -> None:
        """The addresses that may send requests in `dialog`: its next hop and remote target."""
        uris: list[SipUri] = []
        for get in (lambda: SipUri.parse(dialog.remote_target), dialog.next_hop):
            with contextlib.suppress(SipParseError):
                uris.append(get())
        for uri in uris:
            if is_ip(uri.host):
                dialog.peers.add(uri.host)
            else:
                self.spawn(self._resolve_peer(dialog, uri))

    async def _resolve_peer(self, dialog: Dialog, uri: SipUri) -> None:
        with contextlib.suppress(ResolveError):
            dialog.peers.update(host for host, _ in await self.resolver.resolve(uri.host, uri.port, uri.transport))
