"""Load generator for the sync gateway: many simulated devices behind a fault-injecting proxy.

- :class:`~client_sdk.loadgen.proxy.FaultProxy`: a TCP relay whose link can be cut/restored;
- :func:`~client_sdk.loadgen.runner.run_load`: one run, from a
  :class:`~client_sdk.loadgen.report.LoadConfig` to a
  :class:`~client_sdk.loadgen.report.LoadReport`;
- ``sync-gateway-load`` (:mod:`client_sdk.loadgen.cli`): the same from the command line.
"""

from client_sdk.loadgen.proxy import FaultProxy, ProxyStats
from client_sdk.loadgen.report import LoadConfig, LoadReport
from client_sdk.loadgen.runner import run_load

__all__ = ["FaultProxy", "LoadConfig", "LoadReport", "ProxyStats", "run_load"]
