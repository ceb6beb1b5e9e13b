"""Small launchers for model servers that ship as Python packages (not controller code)."""
