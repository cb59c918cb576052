"""What crosses between the scheduler and the model runner (`step.py`), in neither's terms: the
contract both sides read, below both (as vLLM v1's SchedulerOutput and ModelRunnerOutput)."""
