"""Device mesh, logical-axis rules and placement of params, batches and caches."""

from reasoner.sharding.mesh import (MESH_AXES, cpu_cores, make_mesh, mesh_from_config,
                                    mesh_shape, use_cpu_devices)
from reasoner.sharding.rules import (DEFAULT_RULES, batch_shards, batch_sharding, batch_spec, cache_shardings,
                                     logical_to_spec, lora_shardings, param_shardings, replicated,
                                     row_shards, shard_batch, shard_params, sharded_init, to_host,
                                     tree_shardings)
