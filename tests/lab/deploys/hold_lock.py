"""A long run: takes the run lock as deploy.py does, then waits (bounded: 120 s) while
/tmp/hold-lock exists on the host. The lock tests start it, then run deploy.py beside it."""

from pyinfra.operations import server

from ollama_fleet.tasks.kit import lock

lock.take("a test's long run")
server.shell(name="Hold the host while /tmp/hold-lock exists", commands=[
    "i=0; while [ -e /tmp/hold-lock ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i + 1)); done"])
