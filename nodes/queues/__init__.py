"""Queue groups and jobs: dispatching, holding and keeping jobs."""
