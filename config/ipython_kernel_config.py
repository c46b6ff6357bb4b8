# Installed into the venv by `make setup` (.venv/etc/ipython/): read by every kernel the lab starts (JupyterLab,
# papermill, Voilà).
#
# ipykernel warns, in red in every notebook run and once per kernel in `make demo`, that a kernel on TCP without
# CurveZMQ keys "is susceptible to eavesdropping".  The lab's kernels listen on 127.0.0.1 only, their connection
# files are readable by their owner only, and a class runs one laptop per participant: the warning tells a
# participant nothing they can act on.  Only that message is dropped; every other kernel warning still shows.
import logging


class _DropTcpWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "susceptible to eavesdropping" not in record.getMessage()


logging.getLogger("IPKernelApp").addFilter(_DropTcpWarning())
