"""Launchers for model servers that ship as Python packages.

Not controller code: the embedded config.yaml runs them as ``cmd``.
"""
