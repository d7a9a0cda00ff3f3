"""kdlm: knowledge distillation of autoregressive language models.

Implements and extends "Revisiting Knowledge Distillation for Autoregressive Language Models"
(Zhong et al., ACL 2024; https://aclanthology.org/2024.acl-long.587).
"""

__version__ = "0.1.0"
