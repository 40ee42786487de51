"""Playing: the one episode loop with its observers, every policy source (models, replays,
random, scripted and human agents), the benchmark harness behind `nitrogen eval`, and the dataset
writer behind `nitrogen record`."""
