"""Peak memory of test child processes (shared by the memory tests)."""

#: Code for a child script's end: prints ``MAXRSS_KB <peak>``, the child's own peak resident
#: memory (VmHWM of its address space). ``ru_maxrss`` survives execve on Linux, so a child
#: started from a large pytest process would report the parent's size instead.
PRINT_PEAK_RSS = r"""
import pathlib as _pathlib, resource as _resource
_status = _pathlib.Path("/proc/self/status")
_peak = _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss
if _status.is_file():
    _peak = int(next(line.split()[1] for line in _status.read_text().splitlines()
                     if line.startswith("VmHWM:")))
print("MAXRSS_KB", _peak, flush=True)
"""
