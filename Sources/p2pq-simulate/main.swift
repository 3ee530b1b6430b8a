import P2PQSimulationCommand

// The same command as `p2pq simulate`, linked without the node's network stack.
SimulateCommand.main()
