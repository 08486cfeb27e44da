"""Where a webhook may be sent: public internet addresses only, unless the operator lists a
network in WEBHOOK_ALLOWED_NETWORKS (an on-premises receiver).

A client names the URL and the service's workers send to it from inside the deployment, so
an unchecked URL would let any client make the workers POST to loopback, the cloud's
metadata service (169.254.169.254) or a private network, and read from the delivery log
whether something answered there. Two checks:
- at submit (`check_submitted`), without any DNS: a literal address outside the public
  internet, or `localhost`, is refused with a 422 naming `webhook_url`;
- at delivery (`checked_address`), authoritative: the name is resolved once, every address
  it resolves to must be allowed, and the caller connects to that checked address itself
  (service/webhooks.py), so a name that resolves to a public address when checked and to
  an internal one a moment later (DNS rebinding) gains nothing.

"Public" is `ipaddress`'s `is_global` minus what it still lets through (multicast, reserved,
unspecified), and an IPv6 address that carries an IPv4 one (IPv4-mapped, 6to4, Teredo,
NAT64) must carry a public one too. Literal IPv4 in any spelling that URL parsers and
`inet_aton` accept (`0x7f000001`, `2130706433`, `0177.0.0.1`, `127.1`) is read as the
address it means.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence

from pydantic import AnyUrl

from service.problems import Invalid

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Names every resolver answers with loopback (RFC 6761 reserves *.localhost too).
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the IPv4 address is the last 32 bits
# The local-use NAT64 prefix (RFC 8215) embeds IPv4 at a length of the operator's choosing.
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
# A host that a URL parser or inet_aton reads as IPv4: digits, dots, hex digits and 0x.
NUMERIC_HOST = re.compile(r"[0-9][0-9a-fA-FxX.]*")

REFUSED = (
    "is not a public internet address; webhooks go to public addresses only (an operator "
    "may allow private networks with WEBHOOK_ALLOWED_NETWORKS)"
)


class Refused(Exception):
    """The destination is not one a webhook may be sent to."""


def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells literally ("[::1]", "127.0.0.1", "0x7f000001"), or None
    for a name."""
    text = host.strip("[]").rstrip(".").split("%", 1)[0]  # "%eth0": an IPv6 scope
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if NUMERIC_HOST.fullmatch(text):
        try:  # the legacy spellings (hex, octal, fewer than four parts) resolvers accept
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries to (mapped, 6to4, Teredo, NAT64), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Globally reachable unicast: not private, loopback, link-local, shared (100.64/10),
    multicast, reserved or unspecified, nor an IPv6 address carrying such an IPv4 one."""
    if not address.is_global or address.is_multicast or address.is_reserved:
        return False
    if address.is_unspecified or address.is_private or address.is_link_local:
        return False
    if isinstance(address, ipaddress.IPv6Address) and (
        address.is_site_local or address in NAT64_LOCAL
    ):
        return False
    inner = embedded_ipv4(address)
    return inner is None or is_public(inner)


def _listed(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def permitted(address: IPAddress, allowed: Sequence[IPNetwork]) -> bool:
    """Public, or in a network the operator allows (the IPv4 address an IPv6 one carries
    counts: ::ffff:10.0.0.5 is 10.0.0.5)."""
    inner = embedded_ipv4(address)
    if _listed(address, allowed) or (inner is not None and _listed(inner, allowed)):
        return True
    return is_public(address)


def is_local_name(host: str) -> bool:
    name = host.lower().rstrip(".")
    return name in LOCAL_NAMES or name.endswith(".localhost")


def check_submitted(url: AnyUrl | None, allowed: Sequence[IPNetwork]) -> None:
    """Refuse, naming `webhook_url`, a URL whose host is a literal address outside the
    allowed ones, or `localhost` unless loopback is allowed. Names are not resolved here:
    what they resolve to is checked when each delivery is sent. Every route taking a
    `webhook_url` calls this with WEBHOOK_ALLOWED_NETWORKS."""
    host = url.host if url is not None else None
    if host is None:
        return
    address = literal_address(host)
    if address is not None and not permitted(address, allowed):
        raise Invalid(f"{address} {REFUSED}", field=("webhook_url",))
    if is_local_name(host) and not any(permitted(each, allowed) for each in LOOPBACK):
        raise Invalid(f"{host} is loopback and {REFUSED}", field=("webhook_url",))


def lookup(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (blocking; tests replace it, never resolving real
    names)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(sockaddr[0]) for *_, sockaddr in found]


def checked_address(host: str, port: int, allowed: Sequence[IPNetwork]) -> IPAddress:
    """The address to connect to for `host`: a literal one as it is, a name resolved once.
    Refused unless every address it resolves to is permitted: a name that also points
    inside must not be sent to, whichever address a client would try first. OSError when
    it does not resolve."""
    literal = literal_address(host)
    addresses = [literal] if literal is not None else [_parse(each) for each in lookup(host, port)]
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    if not all(permitted(address, allowed) for address in addresses):
        raise Refused(f"the webhook's host {REFUSED}")
    return addresses[0]


def _parse(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%", 1)[0])
