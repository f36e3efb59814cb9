"""The preload: a background fill that follows the sampler and adapts to the storage.

* :mod:`.order` turns a sampler into the indices it will yield without disturbing it (a
  random sampler is previewed from a *copy* of its generator state).
* :mod:`.engine` holds the :class:`Preloader` (load threads that each take the next index,
  skip it if it is cached or being loaded, else load and store it; a coordinator that starts
  them and reports); it claims each index in the cache's
  :class:`~spillcache.flight.SingleFlight`, so that each is loaded once: training joins a
  preload load in progress, and the preload skips what training is loading.
* :mod:`.concurrency` and :mod:`.tuner` set the number of loads in flight
  (``threads="auto"``): a ramp doubles it after every round of loads while that doubles the
  throughput, then a hill-climbing tuner doubles it while the throughput grows, backs off
  when it stops, and probes up and down now and then; its throughput comes from Little's law
  (mean number in flight / mean time a load holds its slot), which loads finishing in waves
  cannot fool.
* :mod:`.lifecycle` is the one state of a preload (new, running, exhausted, ending,
  stopping, done, stopped); :mod:`.guard` keeps every thread of a stopped preload away from
  the store: :meth:`Preloader.stop` returns at once, and a load stuck in user code finishes
  on its own daemon thread, whose result reaches any training thread waiting for it (which
  caches it), never the store from that thread.
* :mod:`.progress`: the preload counters, the progress bar, TensorBoard scalars (through
  :mod:`spillcache.summary`) and log lines.

Memory stays flat: at most ``threads`` loaded samples exist outside the cache, the RAM tier
only takes free space (it never evicts for the preload), and the disk tier's writer bounds
what is queued.
"""

from .engine import Preloader
from .order import preview_order

__all__ = ["Preloader", "preview_order"]
