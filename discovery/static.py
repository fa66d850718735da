"""Static membership: seeds given as ``--peer HOST:PORT``, the whole mesh learned from them.

Every ``interval`` seconds the node introduces itself (control command
``peer``) to each seed and to each member it knows, and learns that node's
record from the reply; a node that is introduced to learns the introducer.
Both sides of an introduction also exchange what they know of the mesh:
the other members' records and the departures they hold, sent only when the
two ``view`` digests (a hash of the (name, instance) pairs each knows,
itself included) differ. A record learned that way is only a lead: the node
dials its control address, and links to it once it answers itself. So naming
one seed joins the whole mesh, and only first-hand contact keeps a member:

* a member not heard from first-hand for ``expiry`` seconds is dropped (and
  is dialled again only while some member that still hears it lists it);
* one that says ``bye`` is dropped at once, and its (name, instance) is held
  as departed for ``tombstone`` seconds, passed on in the exchange, and
  never taken back from a stale copy (a restart has a new instance);
* a restarted node (new ``instance``, new data ports) replaces its old record;
* a seed that does not answer is retried for as long as the node runs.

A name belongs to one running node. At start the node asks each seed for
its own record and its peers (``hello``, ``peers``, one second each); a
record of this node's name with another instance is its holder, and the
start is refused unless the holder is gone (discovery/liveness.py: nothing
listens at its control address, or another instance answers there, such as
this very node restarted on the same port). Seeds that do not answer are
not waited for. A node that introduces itself under this node's name
later (two started at once) is refused with ``name_taken``, and logs it.
"""

import hashlib
import logging
import random
import time

import gevent

from mesh.control import ControlChannel, ControlError, normalize_address
from mesh.members import validate_member, validate_name
from mesh.concurrency import pick_waiter

from mesh.zkmembers import DiscoveryError

from .base import Discovery, NameTaken
from .liveness import holder_state

log = logging.getLogger("meshnode.discovery.static")

MAX_LISTED_MEMBERS = 200  # records in one exchange: a control request holds at most 64 KiB


def view_of(me, members):
    """The digest of a membership: (name, instance) of ``me`` and every member."""
    pairs = sorted(f"{r['name']}\0{r['instance']}" for r in (me, *members))
    return hashlib.sha1("\n".join(pairs).encode()).hexdigest()


def read_exchange(fields):
    """``(members, departed)`` of a ``peer`` request or reply, checked;
    ValueError naming what is wrong."""
    members, departed = fields.get("members", []), fields.get("departed", [])
    if not isinstance(members, list) or len(members) > MAX_LISTED_MEMBERS:
        raise ValueError(f"members is a list of at most {MAX_LISTED_MEMBERS} member records")
    if not isinstance(departed, list) or len(departed) > MAX_LISTED_MEMBERS or not all(
            isinstance(item, list) and len(item) == 2 and isinstance(item[1], str) for item in departed):
        raise ValueError(f"departed is a list of at most {MAX_LISTED_MEMBERS} [name, instance]")
    return [validate_member(record) for record in members], \
        [(validate_name(name), instance) for name, instance in departed]


class StaticDiscovery(Discovery):
    def __init__(self, context, peers, interval=1.0, expiry=5.0, curve=None, tombstone=60.0):
        self._context = context
        self._curve = curve
        self._seeds = [normalize_address(p) for p in peers]
        self.interval = interval
        self.expiry = expiry
        self.tombstone = tombstone
        self._seen = {}  # name -> (record, monotonic time last heard first-hand)
        self._leads = {}  # control address -> monotonic time a member last listed a record there
        self._departed = {}  # (name, instance) -> monotonic time it said bye
        self._views = {}  # control address -> the view its node reported last
        self._published = {}
        self._view = None
        self._me = None
        self._on_change = None
        self._loops = {}  # control address -> the greenlet introducing this node there
        self._expirer = None

    def start(self, me, on_change):
        self._me = me  # first: a peer's introduction while the seeds are asked below is taken in
        self._on_change = on_change
        self._view = view_of(me, [])
        self._refuse_a_taken_name(me)
        for address in self._seeds:
            self._dial(address)
        self._expirer = gevent.spawn(self._expire_loop)

    def _refuse_a_taken_name(self, me):
        """DiscoveryError when a seed lists a holder of ``me``'s name that is not gone."""
        for record in self._records_at_seeds():
            if record["name"] != me["name"] or record["instance"] == me["instance"]:
                continue
            state = holder_state(self._context, record, self._curve)
            if state != "gone":
                answer = "is alive" if state == "alive" else \
                    f"did not answer: if it is dead, its peers forget it within {self.expiry:g} s"
                raise DiscoveryError(f"node name {me['name']!r} is already taken by the node at "
                                     f"{record['control']} (it {answer}); choose another --name")

    def _records_at_seeds(self):
        """Every member record the seeds give: their own and their peers' (asked at once, a second each)."""
        def ask(address):
            channel = ControlChannel(self._context, address, pick_waiter(), timeout=1.0, curve=self._curve)
            try:
                return [channel.request("hello")["member"], *channel.request("peers")["peers"]]
            except (TimeoutError, ControlError, KeyError, TypeError):
                return []
            finally:
                channel.close()

        asks = [gevent.spawn(ask, address) for address in self._seeds]
        gevent.joinall(asks)
        records = []
        for record in (r for greenlet in asks for r in (greenlet.value or [])):
            try:
                records.append(validate_member(record))
            except ValueError:
                pass
        return records

    def _channel(self, address):
        return ControlChannel(self._context, address, pick_waiter(), timeout=self.interval, curve=self._curve)

    def _dial(self, address):
        if address not in self._loops and address != self._me["control"]:
            self._loops[address] = gevent.spawn(self._introduce_loop, address)

    def _wanted(self, address):
        """A seed, a member's control address, or a lead not older than ``expiry``."""
        return address in self._seeds or any(r["control"] == address for r, _ in self._seen.values()) or \
            self._leads.get(address, float("-inf")) > time.monotonic() - self.expiry

    def _introduce_loop(self, address):
        channel = self._channel(address)
        try:
            while self._wanted(address):
                try:
                    reply = channel.request("peer", **self._exchange(self._views.get(address)))
                    member = validate_member(reply.get("member"))
                    if member["instance"] == self._me["instance"]:
                        log.info("%s is this node's own control address: not dialling it", address)
                        return
                    self._views[address] = reply.get("view")
                    self._learn(*read_exchange(reply))
                    self._heard(member)
                except TimeoutError:
                    # Drop requests queued for an absent peer rather than flood it later.
                    channel.close()
                    channel = self._channel(address)
                except ControlError as exc:
                    if exc.code == "name_taken":
                        log.error("%s: this node's name belongs to another running node; choose another "
                                  "--name (%s)", address, exc)
                    else:
                        log.warning("peer %s refused: %s", address, exc)
                except ValueError as exc:
                    log.warning("peer %s sent a bad record: %s", address, exc)
                gevent.sleep(self.interval)
        finally:
            del self._loops[address]
            self._views.pop(address, None)
            channel.close()

    def _exchange(self, their_view):
        """The fields of a ``peer`` request or reply: this node's record and view,
        and what it knows of the mesh when the other side's view differs."""
        fields = {"member": self._me, "view": self._view}
        if their_view != self._view:
            members = list(self._published.values())
            fields["members"] = random.sample(members, min(len(members), MAX_LISTED_MEMBERS))
            fields["departed"] = [list(key) for key in list(self._departed)[:MAX_LISTED_MEMBERS]]
        return fields

    def _expire_loop(self):
        while True:
            gevent.sleep(self.interval)
            now = time.monotonic()
            for name, (record, heard) in list(self._seen.items()):
                if heard < now - self.expiry:
                    log.info("peer %s not heard for %.1f s: dropped", name, self.expiry)
                    del self._seen[name]
            for table, age in ((self._leads, self.expiry), (self._departed, self.tombstone)):
                for key in [key for key, since in table.items() if since < now - age]:
                    del table[key]
            self._publish()

    def announce(self, member, fields):
        if self._me is None:  # its control socket answers before it starts: it learns the peer by its own dial
            return {}
        if member["name"] == self._me["name"] and member["instance"] != self._me["instance"]:
            raise NameTaken(f"node name {member['name']!r} belongs to the running node at {self._me['control']}")
        exchange = read_exchange(fields)
        if member["instance"] != self._me["instance"]:
            self._learn(*exchange)
            self._heard(member)
        return self._exchange(fields.get("view"))

    def _heard(self, member):
        """First-hand news of a member: it answered, or introduced itself."""
        if member["name"] == self._me["name"] or (member["name"], member["instance"]) in self._departed:
            return
        self._seen[member["name"]] = (member, time.monotonic())
        self._dial(member["control"])
        self._publish()

    def _learn(self, members, departed):
        """Second-hand news: departures are applied, records become leads to dial."""
        for name, instance in departed:
            self.depart(name, instance)
        now = time.monotonic()
        for record in members:
            if record["name"] == self._me["name"] or (record["name"], record["instance"]) in self._departed:
                continue
            known = self._seen.get(record["name"])
            if known is None or known[0]["instance"] != record["instance"]:
                self._leads[record["control"]] = now
                self._dial(record["control"])

    def depart(self, name, instance=None):
        known = self._seen.get(name)
        if known is not None and instance in (None, known[0]["instance"]):
            log.info("peer %s said bye", name)
            instance = known[0]["instance"]
            del self._seen[name]
            self._publish()
        if instance is not None and (name, instance) not in self._departed:
            self._departed[(name, instance)] = time.monotonic()

    def _publish(self):
        members = {name: record for name, (record, _) in self._seen.items()}
        if members != self._published:
            self._published = members
            self._view = view_of(self._me, members.values())
            self._on_change(dict(members))

    def stop(self):
        gevent.killall([self._expirer, *self._loops.values()])
        targets = {r["control"] for r in self._published.values()} | set(self._seeds)

        def bye(address):
            channel = self._channel(address)
            try:
                channel.request("bye", name=self._me["name"], instance=self._me["instance"], timeout=0.5)
            except (TimeoutError, ControlError):
                pass
            finally:
                channel.close()

        gevent.joinall([gevent.spawn(bye, a) for a in targets], timeout=1.0)
