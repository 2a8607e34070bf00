"""Peak memory of test child processes (shared by the memory tests)."""

#: Code for a child script's end: prints ``MAXRSS_KB <peak>``, the child's own peak resident
#: memory (:func:`napari_artseg.process_memory.peak_rss_kib`, VmHWM on Linux).
PRINT_PEAK_RSS = r"""
from napari_artseg.process_memory import peak_rss_kib as _peak_rss_kib
print("MAXRSS_KB", _peak_rss_kib(), flush=True)
"""
