"""Who is asking and what they may do: token verification, identity, tenancy, audit."""
