"""The preload: a background fill that follows the sampler and adapts to the storage.

* :mod:`.order` turns a sampler into the indices it will yield without disturbing it (a
  random sampler is previewed from a *copy* of its generator state).
* :mod:`.engine` holds the :class:`Preloader`, built from :class:`PreloadOptions`
  (:mod:`.options`). Its load threads (:mod:`.threads`) each take the next index of the order
  (:mod:`.claiming`), skip it if it is cached or being loaded, promote it into free RAM if
  only the disk holds it (:mod:`.promotion`), else load and store it (:mod:`.landing`); a
  coordinator starts them and reports (:mod:`.reporting`). They share one state
  (:mod:`.run`). Each index is claimed in the cache's
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
  the store (:mod:`.stopping`): :meth:`Preloader.stop` returns at once, and a load stuck in
  user code finishes on its own daemon thread, whose result reaches any training thread
  waiting for it (which caches it), never the store from that thread.
* :mod:`.progress`: the preload counters, the progress bar, TensorBoard scalars (through
  :mod:`spillcache.summary`) and log lines.

Memory stays flat: at most ``threads`` loaded samples exist outside the cache, the RAM tier
only takes free space (it never evicts for the preload), and the disk tier's writer bounds
what is queued.
"""

from .engine import Preloader
from .options import PreloadOptions
from .order import preview_order

__all__ = ["PreloadOptions", "Preloader", "preview_order"]
