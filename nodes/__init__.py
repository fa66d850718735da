"""The meshnode process: data plane, control plane and membership, put together."""
