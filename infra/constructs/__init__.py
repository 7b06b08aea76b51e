"""One construct per capability of the platform; the stack (``infra.stack``) composes them.

Each construct exposes the resources it owns as typed attributes, so other constructs wire to
them (grants, targets, alarms) without reaching into a construct's children.
"""
