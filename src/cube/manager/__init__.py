"""The manager: the control plane that places tasks on workers and keeps them healthy."""
