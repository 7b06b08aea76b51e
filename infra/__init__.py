"""Where the platform runs: the CDK app for AWS and ``infra.local``, the one-machine emulation."""
