"""A PyTorch TD3 update of the same sizes as ``jpanning.agents.td3``, as a speed reference.

The update the Panning authors' code runs (after Fujimoto et al.'s reference TD3): twin
critics trained on ``MSE(Q1, y) + MSE(Q2, y)`` with the clipped double-Q target and clipped
target-policy noise; the actor and the soft target updates every ``policy_delay`` updates.
The replay buffer is a preallocated tensor and sampling is part of the timed update, as in
the JAX version.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


def _mlp(sizes, out_act=None):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)


class TD3:
    """Actor, twin critics, targets, Adam, a filled random buffer on ``device``; :meth:`update`
    is timed."""

    def __init__(
        self,
        obs_size: int,
        action_size: int,
        hidden=(256, 256),
        lr=2e-4,
        batch_size=256,
        buffer_size=100_000,
        gamma=0.99,
        tau=0.01,
        policy_noise=0.2,
        noise_clip=0.5,
        policy_delay=2,
        seed=0,
        device="cpu",
    ):
        torch.manual_seed(seed)
        self.actor = _mlp((obs_size, *hidden, action_size), nn.Tanh()).to(device)
        self.q1 = _mlp((obs_size + action_size, *hidden, 1)).to(device)
        self.q2 = _mlp((obs_size + action_size, *hidden, 1)).to(device)
        self.actor_t = copy.deepcopy(self.actor)
        self.q1_t, self.q2_t = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.critic_opt = torch.optim.Adam(
            list(self.q1.parameters()) + list(self.q2.parameters()), lr=lr
        )
        g = torch.Generator().manual_seed(seed)
        self.obs = torch.randn(buffer_size, obs_size, generator=g)
        self.action = torch.rand(buffer_size, action_size, generator=g) * 2 - 1
        self.reward = torch.randn(buffer_size, 1, generator=g)
        self.next_obs = torch.randn(buffer_size, obs_size, generator=g)
        self.not_done = (torch.rand(buffer_size, 1, generator=g) > 0.01).float()
        self.obs, self.action, self.reward, self.next_obs, self.not_done = (
            t.to(device) for t in (self.obs, self.action, self.reward, self.next_obs, self.not_done)
        )
        self.device = device
        self.batch_size, self.gamma, self.tau = batch_size, gamma, tau
        self.policy_noise, self.noise_clip, self.policy_delay = (
            policy_noise,
            noise_clip,
            policy_delay,
        )
        self.steps = 0

    def _soft(self, net, target):
        with torch.no_grad():
            for p, t in zip(net.parameters(), target.parameters()):
                t.mul_(1 - self.tau).add_(p, alpha=self.tau)

    def update(self):
        self.steps += 1
        i = torch.randint(0, self.obs.shape[0], (self.batch_size,), device=self.device)
        s, a, r, s2, nd = (
            self.obs[i],
            self.action[i],
            self.reward[i],
            self.next_obs[i],
            self.not_done[i],
        )
        with torch.no_grad():
            noise = (torch.randn_like(a) * self.policy_noise).clamp(
                -self.noise_clip, self.noise_clip
            )
            a2 = (self.actor_t(s2) + noise).clamp(-1.0, 1.0)
            sa2 = torch.cat([s2, a2], 1)
            y = r + nd * self.gamma * torch.min(self.q1_t(sa2), self.q2_t(sa2))
        sa = torch.cat([s, a], 1)
        critic_loss = F.mse_loss(self.q1(sa), y) + F.mse_loss(self.q2(sa), y)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        if self.steps % self.policy_delay == 0:
            actor_loss = -self.q1(torch.cat([s, self.actor(s)], 1)).mean()
            self.actor_opt.zero_grad()
            actor_loss.backward()
            self.actor_opt.step()
            self._soft(self.actor, self.actor_t)
            self._soft(self.q1, self.q1_t)
            self._soft(self.q2, self.q2_t)
