"""Identity resolution (SPEC 4): connected components over merging identifiers.

An incremental union-find whose nodes are

* ``i:<type>:<value>`` for every identifier whose type is configured ``merge: true``;
* ``p:<purchase_id>`` for purchases, refunds and lines, so a refund lands with its
  purchase (POS returns carry no identifiers);
* ``r:<record_id>`` for a record with neither (e.g. only a phone number): its own guest.

A purchase with no identifier at all (SPEC 2: a POS sale without a card) is anonymous: it
has no identity and forms no profile; :meth:`IdentityGraph.add` raises
:class:`AnonymousRecord` for it. The graph keeps nothing of it (anonymous sales are most of
a store's sales), so the identifier-less return of such a sale is an unknown purchase here;
the stream adapter recognises it from the anonymous sales it recorded.

Purchase nodes are most of a graph (a member with 50 purchases has 52 nodes, ~7.4 KB;
without them ~0.7 KB, ``bench domain``), and only a later record of the same purchase ever
looks one up. So a graph can forget them (:meth:`IdentityGraph.forget_purchases`, oldest
first, never a cluster's root) and be taught one again by re-adding any stored record of
that purchase: adding a record the graph has seen changes nothing but the purchase node. A
caller that forgets must do that before it adds a record naming a purchase the graph does
not know (:meth:`IdentityGraph.purchase_known`); the identity stage looks them up in the
store (``streams/identity.py``). The pure graph never forgets on its own.

A non-merging identifier (phone by default) is *attached* to the cluster of its record but
never joins two clusters: two people sharing a household phone stay two profiles.

Cluster ids are functions of the cluster's contents only, so the final grouping and the
ids do not depend on arrival order: ``member:<smallest member_no>`` when the cluster holds a
member number, else ``guest:<hash of the earliest record id>`` where "earliest" is the
smallest ``(occurred_at, record_id)`` of the cluster's records. The same rule names the
survivor of a merge: the profile holding the smallest member_no; guests merge into members;
between guests the earliest-seen. Which ``profiles_merged`` events are emitted does depend
on arrival order (they describe what the pipeline learnt, and when), their survivor does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from hashlib import blake2b
from sys import intern
from typing import Any

from app.domain.events import LoyaltyEvent, event_id
from app.domain.program import CompiledProgram
from app.domain.records import (
    AnonymousRecord,
    Identifier,
    PurchaseCompleted,
    PurchaseLine,
    PurchaseRefunded,
    Record,
    UnknownPurchase,
    format_time,
    parse_time,
    smallest_member_no,
)


@dataclass(slots=True)
class _Cluster:
    """One cluster: every member the store has keeps one in memory, so it holds only what
    its id needs (the member numbers are read off its identifiers: a set of their own cost
    ~220 bytes a member)."""

    earliest: tuple[datetime, str]
    identifiers: set[Identifier] = field(default_factory=set)
    # the cluster id, cached: whoever changes earliest or the member numbers resets it
    cid: str | None = field(default=None, compare=False, repr=False)

    def member_nos(self) -> list[str]:
        return [i.value for i in self.identifiers if i.type == "member_no"]

    def cluster_id(self) -> str:
        cid = self.cid
        if cid is None:
            member = smallest_member_no(self.identifiers)
            if member is not None:
                cid = "member:" + member
            else:
                cid = "guest:" + blake2b(self.earliest[1].encode(), digest_size=8).hexdigest()
            self.cid = cid
        return cid

    def absorb(self, other: _Cluster) -> None:
        self.earliest = min(self.earliest, other.earliest)
        self.identifiers |= other.identifiers
        self.cid = None

    def keys(self) -> list[str]:
        """The identifiers as sorted ``type:value`` keys."""
        return sorted(i.key for i in self.identifiers)


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where a record lands.

    ``previous_ids``: ids of clusters that existed before this record and are now part of
    ``cluster_id`` (other than ``cluster_id`` itself). The stream layer moves their member
    states into ``cluster_id`` (``MemberState.merged``). A single previous id with no
    ``profiles_merged`` event is a rename (a guest became a member, or an earlier record
    changed a guest's earliest record).
    """

    record_id: str
    cluster_id: str
    previous_ids: tuple[str, ...]
    events: tuple[LoyaltyEvent, ...]


class IdentityGraph:
    """All clusters known to one resolver. ``add`` is O(α(n)) per identifier."""

    __slots__ = ("_clusters", "_parent", "_program", "_purchases")

    def __init__(self, program: CompiledProgram) -> None:
        self._program = program
        self._parent: dict[str, str] = {}
        self._clusters: dict[str, _Cluster] = {}  # root node -> cluster
        # purchase nodes that can be forgotten, oldest first: those that joined a cluster
        # rooted elsewhere. No node ever points to such a node (only roots become parents:
        # unions link roots, path compression links to the root), so deleting it changes
        # no other node's cluster.
        self._purchases: dict[str, None] = {}

    def _find(self, node: str) -> str:
        parent = self._parent
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:
            parent[node], node = root, parent[node]
        return root

    def _nodes(self, r: Record) -> list[str]:
        merging = self._program.merging
        nodes = [f"i:{i.type}:{i.value}" for i in r.identifiers if i.type in merging]
        if isinstance(r, PurchaseCompleted | PurchaseRefunded | PurchaseLine):
            pnode = "p:" + r.purchase_id
            if not r.identifiers and pnode not in self._parent and isinstance(
                r, PurchaseCompleted
            ):
                raise AnonymousRecord(r.record_id)
            if not nodes and pnode not in self._parent and not isinstance(r, PurchaseCompleted):
                raise UnknownPurchase(
                    r.record_id, f"no identifiers and unknown purchase {r.purchase_id!r}"
                )
            nodes.append(pnode)
        return nodes or ["r:" + r.record_id]

    def add(self, r: Record) -> Resolution:
        """Resolve a record (idempotent for duplicates) and report merges and renames."""
        nodes = self._nodes(r)
        parent, clusters = self._parent, self._clusters
        pnode = nodes[-1] if nodes[-1][0] == "p" else None
        if pnode is not None and pnode in parent:
            pnode = None  # only a new purchase node is tracked below
        found: set[str] = set()
        for n in nodes:
            p = parent.get(n)
            if p is not None:
                # a node is mostly a direct child of its root (paths are compressed)
                found.add(p if parent[p] == p else self._find(n))
        if len(found) == 1:  # the common case: the record's known nodes share one cluster
            root = found.pop()
            roots = [root]
            cluster = clusters[root]
            before: tuple[str, ...] = (cluster.cluster_id(),)
            for n in nodes:
                if n not in parent:
                    parent[n] = root
        else:
            roots = sorted(found)
            before = tuple(clusters[root].cluster_id() for root in roots)
            for n in nodes:
                if n not in parent:
                    parent[n] = n
            root = roots[0] if roots else nodes[0]
            if not roots:
                clusters[root] = _Cluster((r.occurred_at, r.record_id))
            cluster = clusters[root]
            for other in roots[1:]:
                cluster.absorb(clusters.pop(other))
                parent[other] = root
            for n in nodes:
                parent[self._find(n)] = root
        if pnode is not None and parent[pnode] != pnode:
            self._purchases[pnode] = None
        t, first = r.occurred_at, cluster.earliest
        if t < first[0] or (t == first[0] and r.record_id < first[1]):
            cluster.earliest = (t, r.record_id)
            cluster.cid = None
        known = cluster.identifiers
        for i in r.identifiers:
            if i not in known:
                known.add(i)
                if i.type == "member_no":
                    cluster.cid = None
        new_id = cluster.cluster_id()
        previous: tuple[str, ...]
        if len(before) == 1:
            previous = () if before[0] == new_id else before
        else:
            previous = tuple(sorted({cid for cid in before if cid != new_id}))
        events: tuple[LoyaltyEvent, ...] = ()
        if len(roots) > 1:
            member_id = smallest_member_no(cluster.identifiers)
            events = tuple(
                LoyaltyEvent(
                    event_id("profiles_merged", r.occurred_at, r.record_id, absorbed),
                    "profiles_merged",
                    new_id,
                    member_id,
                    r.occurred_at,
                    r.record_id,
                    {"survivor": new_id, "absorbed": absorbed},
                )
                for absorbed in sorted(set(before) - {new_id})
            )
        return Resolution(r.record_id, new_id, previous, events)

    def cluster_of(self, type_: str, value: str) -> str | None:
        """Cluster id holding a (normalised) merging identifier, if known."""
        node = f"i:{type_}:{value}"
        if node not in self._parent:
            return None
        return self._clusters[self._find(node)].cluster_id()

    def purchase_known(self, purchase_id: str) -> bool:
        """Whether the graph holds a node of this purchase (see :meth:`forget_purchases`)."""
        return "p:" + purchase_id in self._parent

    def forget_purchases(self, keep: int) -> int:
        """Forget the oldest purchase nodes beyond ``keep``; returns how many went.

        Only nodes that joined a cluster rooted elsewhere are forgotten (see ``_purchases``),
        so every cluster, its id and its identifiers stay as they are. Until a record of the
        purchase is added again, the graph no longer knows the purchase: the caller re-adds
        a stored record of it before adding any record that names it (module doc).
        """
        tracked, parent = self._purchases, self._parent
        gone = 0
        while len(tracked) > keep:
            node = next(iter(tracked))
            del tracked[node]
            parent.pop(node, None)
            gone += 1
        return gone

    def cluster_of_purchase(self, purchase_id: str) -> str | None:
        node = "p:" + purchase_id
        if node not in self._parent:
            return None
        return self._clusters[self._find(node)].cluster_id()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (parent links compressed to roots, one entry per cluster)."""
        roots: dict[str, list[str]] = {}
        for node in self._parent:
            roots.setdefault(self._find(node), []).append(node)
        return {
            "v": 1,
            "clusters": [
                {
                    "nodes": sorted(nodes),
                    "earliest": [format_time(c.earliest[0]), c.earliest[1]],
                    "member_nos": sorted(c.member_nos()),
                    "identifiers": c.keys(),
                }
                for root, nodes in sorted(roots.items())
                for c in (self._clusters[root],)
            ],
        }

    @classmethod
    def from_dict(cls, program: CompiledProgram, d: dict[str, Any]) -> IdentityGraph:
        if d.get("v") != 1:
            raise ValueError(f"unsupported identity graph format {d.get('v')!r}")
        g = cls(program)
        for c in d["clusters"]:
            root = c["nodes"][0]
            for node in c["nodes"]:
                g._parent[node] = root
                if node != root and node[0] == "p":
                    g._purchases[node] = None
            t, rid = c["earliest"]
            pairs = (key.partition(":") for key in c["identifiers"])  # types hold no ":"
            # (the "member_nos" written by to_dict are the member_no identifiers' values)
            g._clusters[root] = _Cluster(
                (parse_time(t, rid), rid), {Identifier(intern(k), v) for k, _, v in pairs}
            )
        return g

    def clusters(self) -> dict[str, list[str]]:
        """cluster id -> sorted identifiers (``type:value``), for tests and export."""
        return {c.cluster_id(): c.keys() for c in self._clusters.values()}
