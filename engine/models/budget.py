"""Byte budgets for models: the memory loaded versions hold (`--model-memory`, `models.memory_budget`) and the disk
their downloaded copies take (`--model-disk`, `models.disk_budget`).

A Ledger counts the bytes of its charges, least recently used first. A process has one ledger for memory and one for
disk, shared by the repositories of all its APIs; an API with a budget of its own has ledgers of its own besides, and
its charges count in both. Every ledger of the process is guarded by one lock, `room`, and no repository lock is
taken while it is held: the ledger picks victims and takes them out of its books, then each victim's owner drops
what it stood for (`Owner.evicted`), so that one API's load may evict another API's model without a lock-order
problem.

A charge is evictable once its load (or download) has ended and nothing uses it: a memory charge is used by the
requests that hold it (`holding`), a disk copy by the loaded versions read from it (`pin`). A version unloaded by
request (ModelRepository.unload) is freed as soon as nothing uses it (`free_when_unused`), and never evicted meanwhile.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

from engine.errors import ModelError
from engine.settings import env_name, optional_size

log = logging.getLogger("engine.models")
Key = tuple[str, int]

WAIT_FOR_ROOM = 10.0  # seconds a load waits for models in use to be released before it is refused with 503

room = threading.Condition(threading.RLock())  # guards every ledger and charge of this process


class BudgetError(ModelError):
    """A load or a download refused by a byte budget: 507 for a model larger than a whole budget, 503 for one that
    finds no room while the models that would have to go are in use."""


class Owner(Protocol):
    """The repository a charge belongs to."""

    def evicted(self, charge: Charge) -> None:
        """Drop what `charge` stood for: the ledger evicted it to make room (called without `room` held)."""


@dataclass(eq=False)
class Charge:
    """One version's bytes in memory, or one downloaded copy's bytes on disk."""

    owner: Owner
    key: Key
    label: str  # "model a of version 1", for messages
    size: int
    ledgers: tuple[Ledger, ...]
    state: str = "reserved"  # reserved (its load or download runs), kept (in the books), gone (evicted or dropped)
    users: int = 0  # requests holding a loaded version; loaded versions pinning a disk copy
    pins: list[Charge] = field(default_factory=list)  # the disk copies this loaded version pins
    on_unused: Callable[[], None] | None = None  # frees an unloaded version once its last request ends

    @property
    def what(self) -> str:
        """"memory" or "disk"."""
        return self.ledgers[0].what

    @property
    def evictable(self) -> bool:
        """True when evicting it frees what it counts: kept, used by nothing, and not already on its way out."""
        return self.state == "kept" and self.users == 0 and self.on_unused is None


class Ledger:
    """The charges counted against one budget (no limit: counted only, for the metrics), least recently used first."""

    def __init__(self, limit: int | None, name: str, what: str) -> None:
        self.limit = limit
        self.name = name  # where the limit is set, for messages: "--model-memory", "api 'x': models.memory_budget"
        self.what = what  # "memory" or "disk"
        self.charges: OrderedDict[Charge, None] = OrderedDict()
        self.used = 0

    def fits(self, size: int) -> bool:
        """True when `size` more bytes stay within the limit."""
        return self.limit is None or self.used + size <= self.limit

    def describe(self) -> str:
        """The limit and where it is set, for messages."""
        return f"the model {self.what} budget ({self.name} = {shown(self.limit or 0)})"


def shown(size: int) -> str:
    """A byte count for people: 12.5 MiB (13107200 bytes)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit} ({size} bytes)"
    return f"{size} bytes"


# --- this process's ledgers ----------------------------------------------------------------------------------------

_process: dict[str, Ledger] = {}


def process_ledger(what: str) -> Ledger:
    """This process's ledger for "memory" or "disk": limited by `configure`, else by ENGINE_MODEL_MEMORY and
    ENGINE_MODEL_DISK (how worker processes learn the front's flags)."""
    with room:
        ledger = _process.get(what)
        if ledger is None:
            ledger = _process[what] = Ledger(_from_environment(what), _flag(what), what)
        return ledger


def configure(memory: int | None, disk: int | None) -> None:
    """Set this process's budgets (engine serve's --model-memory and --model-disk), and pass them on through the
    environment to the worker processes it starts."""
    for what, limit in (("memory", memory), ("disk", disk)):
        variable = env_name(f"model_{what}")
        if limit is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = str(limit)
        with room:
            process_ledger(what).limit = limit
            room.notify_all()


def _flag(what: str) -> str:
    return f"--model-{what}"


def _from_environment(what: str) -> int | None:
    text = os.environ.get(env_name(f"model_{what}"), "")
    try:
        return optional_size(text)
    except ValueError:
        return None  # engine serve checked it before starting this process


# --- admitting, using and dropping charges ---------------------------------------------------------------------


def admit(owner: Owner, key: Key, label: str, size: int, ledgers: tuple[Ledger, ...]) -> tuple[Charge, list[Charge]]:
    """Reserve `size` bytes in every ledger before a load or a download: the new charge, and the charges evicted to
    make room (to hand to their owners). BudgetError 507 when it is larger than a whole budget; 503 when the models
    that would have to go stay in use for WAIT_FOR_ROOM seconds."""
    for ledger in ledgers:
        if ledger.limit is not None and size > ledger.limit:
            raise too_large(label, size, ledger)
    deadline = time.monotonic() + WAIT_FOR_ROOM
    victims: list[Charge] = []
    with room:
        short = _blocked(ledgers, size)
        if short is not None:
            log.info("%s waits up to %g s for room: %s is taken by %s in use", label, WAIT_FOR_ROOM,
                     short.describe(), _in_use(short))
        while short is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BudgetError(f"{label} needs {shown(size)} but {short.describe()} is taken by "
                                  f"{_in_use(short)} that requests are using or loading right now; try again when "
                                  "they are done (or raise the budget)", 503)
            room.wait(remaining)
            short = _blocked(ledgers, size)
        for ledger in ledgers:  # evicting all it may would make room (_blocked): the least recently used go first
            while not ledger.fits(size):
                victim = next(charge for charge in ledger.charges if charge.evictable)
                _remove(victim)
                victims.append(victim)
        charge = Charge(owner, key, label, size, ledgers)
        for ledger in ledgers:
            ledger.charges[charge] = None
            ledger.used += size
    return charge, victims


def resize(charge: Charge, size: int) -> list[Charge]:
    """Set a charge's measured size once its load has ended; evicts unused models if that overdraws a budget (the
    victims, to hand to their owners). BudgetError 507 when it is larger than a whole budget."""
    with room:
        for ledger in charge.ledgers:
            if ledger.limit is not None and size > ledger.limit:
                raise too_large(charge.label, size, ledger)
        if charge.state != "gone":
            for ledger in charge.ledgers:
                ledger.used += size - charge.size
        charge.size = size
        victims: list[Charge] = []
        for ledger in charge.ledgers:
            while not ledger.fits(0):
                victim = next((c for c in ledger.charges if c.evictable and c is not charge), None)
                if victim is None:
                    break  # the models in use go over it until they are released; the next load makes room
                _remove(victim)
                victims.append(victim)
        return victims


def keep(charge: Charge, held: bool) -> None:
    """The load or download has ended and its result is kept: the charge becomes evictable when unused. `held`: the
    current `holding` block (if any) uses it, atomically, so that no other load evicts it first."""
    with room:
        if charge.state == "reserved":
            charge.state = "kept"
        if held:
            _hold(charge)
        _touch(charge)


def use(charge: Charge) -> bool:
    """Mark a kept charge as just used (held by the current `holding` block, if any); False once it is gone."""
    with room:
        if charge.state == "gone":
            return False
        _hold(charge)
        _touch(charge)
        return True


def pin(copy: Charge, by: Charge) -> bool:
    """Keep a disk copy while the loaded version `by` lives (its load reads it; a python model may read it later);
    False once the copy is gone."""
    with room:
        if copy.state == "gone":
            return False
        copy.users += 1
        by.pins.append(copy)
        _touch(copy)
        return True


def free_when_unused(charge: Charge, free: Callable[[], None]) -> None:
    """Call `free` (which drops what the charge stands for) once no request holds the charge: now, or as the last
    `holding` block that uses it ends. Until then it stays counted (its memory is in use) and is never evicted."""
    with room:
        if charge.users > 0:
            charge.on_unused = free
            return
        _remove(charge)
    free()


def discharge(charge: Charge) -> None:
    """Take a charge out of its ledgers (a load failed, a version was removed, replaced, or evicted by count)."""
    with room:
        _remove(charge)


def too_large(label: str, size: int, ledger: Ledger) -> BudgetError:
    """The 507 for a model larger than a whole budget."""
    return BudgetError(f"{label} needs {shown(size)}, more than {ledger.describe()} allows in all; raise the budget "
                      f"or serve a smaller model", 507)


def _remove(charge: Charge) -> None:
    if charge.state == "gone":
        return
    charge.state = "gone"
    for ledger in charge.ledgers:
        ledger.charges.pop(charge, None)
        ledger.used -= charge.size
    for copy in charge.pins:
        copy.users -= 1
    charge.pins.clear()
    room.notify_all()


def _touch(charge: Charge) -> None:
    for ledger in charge.ledgers:
        if charge in ledger.charges:
            ledger.charges.move_to_end(charge)


def _blocked(ledgers: tuple[Ledger, ...], size: int) -> Ledger | None:
    """The first ledger where `size` bytes would not fit even with every evictable charge evicted."""
    for ledger in ledgers:
        if ledger.limit is not None and \
                ledger.used - sum(c.size for c in ledger.charges if c.evictable) + size > ledger.limit:
            return ledger
    return None


def _in_use(ledger: Ledger) -> str:
    busy = [charge for charge in ledger.charges if not charge.evictable]
    return f"{len(busy)} model{'s' if len(busy) != 1 else ''} ({shown(sum(c.size for c in busy))})"


# --- requests hold the models they use ---------------------------------------------------------------------------

_held: ContextVar[list[Charge] | None] = ContextVar("engine_models_held", default=None)


@contextmanager
def holding() -> Iterator[None]:
    """Every model got inside this block (ModelRepository.get) stays loaded until the block ends: wraps a request's
    predict, and a client's use of a model."""
    held: list[Charge] = []
    token = _held.set(held)
    try:
        yield
    finally:
        _held.reset(token)
        if held:
            unused = []
            with room:
                for charge in held:
                    charge.users -= 1
                    if charge.users == 0 and charge.on_unused is not None:  # unloaded while this block used it
                        unused.append(charge.on_unused)
                        charge.on_unused = None
                        _remove(charge)
                room.notify_all()
            for free in unused:
                free()


def _hold(charge: Charge) -> None:
    held = _held.get()
    if held is not None:
        charge.users += 1
        held.append(charge)


def is_holding() -> bool:
    """True inside a `holding` block."""
    return _held.get() is not None


# --- measuring and freeing -------------------------------------------------------------------------------------

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
_returning = False


def return_freed_memory() -> None:
    """Make the memory of an evicted model leave the process (glibc): blocks over 128 KiB are mapped on their own and
    unmapped when freed. By default glibc raises that threshold as large blocks are freed and keeps later ones in its
    heap, so a process serving a budget would stay at its peak. Once per process; a no-op elsewhere."""
    global _returning
    if _returning:
        return
    _returning = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):  # not glibc
        pass



def resident_bytes() -> int | None:
    """This process's resident memory (Linux); None where it cannot be read."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
