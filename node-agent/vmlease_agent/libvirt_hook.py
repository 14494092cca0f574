"""Where hook files installed by vmlease 0.1 look for the hook (``from vmlease_agent.libvirt_hook
import exit_main``): they keep working after the move to ``virt.hook``. Running ``vmlease libvirt
install-hook`` again writes a hook file that imports ``virt.hook`` directly."""

from vmlease_agent.virt.hook import exit_main

__all__ = ["exit_main"]
