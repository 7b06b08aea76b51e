"""The domain core of the serverless EHR, shipped to Lambda as a layer.

It never imports ``functions/`` or ``infra/`` (an import-linter contract checks this).
"""

__version__ = "0.1.0"
