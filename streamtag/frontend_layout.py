"""The layout of the frontend's state, shared by :mod:`streamtag.frontend` (which
allocates and reads it) and :mod:`streamtag.frontend_kernel` (the compiled code
that updates it): a module of its own, so that neither imports the other.

The kernel takes everything it keeps between calls (state, tables, scratch
and the window ring) in one float64 array, with integers and the float32 ring
as views of parts of it: each array argument costs ~80 ns on every call, and
with a dozen arrays and the FFT plan's tuple that alone cost more than
computing a frame. Layout (see ``Frontend.__init__``), in float64 words::

    header (int64)   [start, end, emitted, slot, used, hop, n_fft, n_mels, nnz, twiddles, buffer, ints, ring]
    tables (int64)   fb_ptr fb_start gather
    floats           buf (float32, 2 per word) hist window (split, see make_plan) fb_w amin twiddles
                     post_twiddles work power energy mantissa logmel delta
    ring (float32)   (2 * history, 2, n_mels): frame by frame, so a frame is one contiguous write
"""

from streamtag.features import DELTA_TAPS

_START, _END, _EMITTED, _SLOT, _USED, _HOP, _NFFT, _NMELS, _NNZ, _TWIDDLES, _BUFFER, _INTS, _RING = range(13)
_HEADER = 13
_HISTORY = 2 * DELTA_TAPS + 1  # log-mel frames the causal delta filter reads
_KERNEL_MODULE = "streamtag_frontend_kernel"  # the compiled extension's name: it exports PyInit_<this>
