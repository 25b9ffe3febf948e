"""LeRobot checkpoints served by Triton's python backend with LeRobot's own API (see runner.LeRobotRunner)."""
