"""Between intake and processing: how a channel's `received` messages get their steps run.

`bus: none` (embedded.py): in the process that received them. `bus: amqp` (amqp.py): their ids
go through RabbitMQ quorum queues that every worker process consumes. Both implement
`ChannelWork` (base.py); the channel does not know which one it has.
"""
