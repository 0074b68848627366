"""Evaluating the policy's Rego modules with rego-cpp (regopy), in a worker process the bot owns."""
