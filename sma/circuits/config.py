"""Settings of the mechanistic analysis: defined with the other config sections in :mod:`sma.config`
(nested in the run config as ``analysis``) and re-exported here."""

from sma.config import METHODS, AnalysisConfig

__all__ = ["METHODS", "AnalysisConfig"]
