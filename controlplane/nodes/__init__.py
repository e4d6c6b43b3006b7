"""What is done to one node with the services, shared by operations and workflow steps:
its specs and secrets, pgBackRest setup and runs, restore sources and plans, the mesh."""
