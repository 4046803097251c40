"""A built-in, deterministic, synthetic fine-tuning task: support tickets to JSON records.

A customer writes a free-text ticket (greetings, chatter, typos, varied case); the model must
return a record with fixed fields in a fixed order. Every field is recoverable from the text:

- ``category``: the issue sentence belongs to exactly one category;
- ``priority``: an explicit cue ("urgent", "asap", "no rush", ...) wins, else the issue's
  default priority (e.g. being charged twice is high, a warranty question is low);
- ``product``: the catalogue name of the product alias mentioned in the ticket;
- ``order_id``: the id after "order"/"#", upper-cased and without "#", or null when absent.
"""

from __future__ import annotations

import json
import random
import re

from ftlight.errors import ConfigError

FIELDS = ("category", "priority", "product", "order_id")
"""The record's fields, in output order."""

CATEGORIES = ("billing", "shipping", "returns", "technical", "account", "product_question")
"""The allowed ``category`` values (also the classification labels)."""

PRIORITIES = ("low", "medium", "high")
"""The allowed ``priority`` values."""

PRODUCTS: dict[str, tuple[str, ...]] = {
    "AeroBook 14": ("AeroBook 14", "Aerobook 14", "aerobook 14 laptop", "AeroBook14"),
    "PixelPhone X": ("PixelPhone X", "Pixelphone X", "pixel phone x"),
    "SoundWave Buds": ("SoundWave Buds", "Soundwave buds", "soundwave earbuds"),
    "HomeHub Mini": ("HomeHub Mini", "Homehub mini", "home hub mini speaker"),
    "FitBand 3": ("FitBand 3", "Fitband 3", "fitband3 tracker"),
    "BrewMaster Kettle": ("BrewMaster Kettle", "brewmaster kettle", "BrewMaster"),
    "StreamStick 4K": ("StreamStick 4K", "streamstick 4k", "Stream Stick 4K"),
    "PowerCell Bank": ("PowerCell Bank", "powercell power bank", "PowerCell charger"),
    "LumaLamp": ("LumaLamp", "Luma Lamp", "lumalamp smart lamp"),
    "GameDock Pro": ("GameDock Pro", "gamedock pro", "Game Dock Pro"),
}
"""Catalogue: normalised product name -> the ways customers write it."""

INSTRUCTION = (
    "Extract the support ticket as JSON with keys category (billing, shipping, returns, "
    "technical, account, product_question), priority (low, medium, high), product and "
    "order_id (null if none)."
)
"""The fixed instruction of every SFT row."""

# (issue sentence, default priority); {product} is an alias, {days} a small number.
_ISSUES: dict[str, tuple[tuple[str, str], ...]] = {
    "billing": (
        ("I was charged twice for my {product}.", "high"),
        ("My card was charged for the {product} but the payment shows as failed.", "high"),
        ("The invoice for my {product} shows the wrong amount.", "medium"),
        ("The discount code didn't apply when I paid for the {product}.", "medium"),
        ("I need a copy of the invoice for the {product} for my company.", "low"),
        ("I was billed for an extended warranty on the {product} that I never added.", "medium"),
    ),
    "shipping": (
        ("My {product} still hasn't arrived and it's been {days} days.", "medium"),
        ("The tracking page for my {product} hasn't updated in a week.", "low"),
        ("The courier says my {product} was delivered but nothing came.", "high"),
        ("My {product} was sent to my old address, can you redirect it?", "high"),
        ("Can I change the delivery date for my {product}?", "low"),
        ("Only part of my shipment arrived, the {product} is missing from the box.", "medium"),
    ),
    "returns": (
        ("I'd like to return the {product}, it's not what I expected.", "low"),
        ("How do I send back the {product}? I want my money back.", "medium"),
        ("I returned the {product} {days} days ago and still haven't got my refund.", "high"),
        ("Can I exchange my {product} for a different colour?", "low"),
        ("The return label for my {product} doesn't work.", "medium"),
    ),
    "technical": (
        ("My {product} won't turn on anymore.", "high"),
        ("The {product} keeps disconnecting from the wifi.", "medium"),
        ("The battery on my {product} drains in a couple of hours.", "medium"),
        ("The firmware update failed and now my {product} is stuck on the logo.", "high"),
        ("The {product} app crashes every time I try to pair it.", "medium"),
        ("My {product} makes a weird buzzing noise.", "low"),
    ),
    "account": (
        ("I can't log in to my account to register my {product}.", "medium"),
        ("I think my account was hacked, I can't get into it from my {product}.", "high"),
        ("The password reset email never arrives, so I can't set up my {product}.", "medium"),
        ("How do I change the email address on my account? It's linked to my {product}.", "low"),
        ("Please delete my account and the data from my {product}.", "low"),
        ("My account is locked after too many attempts and I need it for the {product}.", "high"),
    ),
    "product_question": (
        ("Does the {product} work with a Mac?", "low"),
        ("Is the {product} waterproof?", "low"),
        ("What's the warranty on the {product}?", "low"),
        ("Will the {product} work abroad with a different plug?", "low"),
        ("Is there a newer version of the {product} coming out?", "low"),
        ("How long does the battery of the {product} last on a full charge?", "low"),
    ),
}

# Neutral extra sentences per category: more words, no cue, no other category's wording.
_DETAILS: dict[str, tuple[str, ...]] = {
    "billing": ("I paid with my credit card.", "I checked my bank statement twice."),
    "shipping": ("I was home all day.", "I chose standard delivery at checkout."),
    "returns": ("The box is still sealed.", "I kept the original packaging."),
    "technical": ("I've tried restarting it a few times.", "I followed the manual step by step."),
    "account": ("I've used the same email for years.", "I tried on two different devices."),
    "product_question": ("I'm thinking of buying one.", "I couldn't find it in the FAQ."),
}

_HIGH_CUES = (
    "This is urgent.",
    "URGENT!!",
    "Please fix this asap.",
    "I need this sorted today.",
    "Please help as soon as possible!",
)
_LOW_CUES = (
    "No rush on this.",
    "Not urgent, whenever you get a chance.",
    "No hurry at all.",
    "Just whenever you have time.",
)

_CHATTER = (
    "I've been a loyal customer for years.",
    "My kids love your stuff btw.",
    "Sorry for the long message.",
    "I already tried calling but the line was busy.",
    "I bought it as a birthday present for my brother.",
    "Your website is a bit confusing on mobile.",
    "Hope you're all well.",
    "This is my first time contacting support.",
    "I'm writing from my work email.",
    "A friend recommended your shop.",
    "I've been a customer since 2019.",
)
_GREETINGS = ("Hi", "Hello", "Hey", "Hi there", "Hello support", "Dear support team")
_GREETINGS += ("Good morning", "Good afternoon", "hey guys")
_CLOSINGS = ("Thanks", "Thank you", "Thanks in advance", "Cheers", "Best regards")
_CLOSINGS += ("Kind regards", "thx", "Many thanks")
_NAMES = ("Sam", "Priya", "Tom K.", "Maria", "J. Chen", "Alex", "Fatima", "Oliver", "Lena")
_ORDER_SENTENCES = (
    "Order number: {oid}.",
    "My order is {oid}.",
    "It was order {oid}.",
    "(order {oid})",
    "Ref: order {oid}.",
    "The order number is {oid}.",
)
# The share of tickets in each category that mention an order.
_ORDER_RATE = {
    "billing": 0.8,
    "shipping": 0.9,
    "returns": 0.85,
    "technical": 0.35,
    "account": 0.1,
    "product_question": 0.15,
}
_TYPOS = {
    "received": "recieved",
    "please": "pls",
    "thanks": "thx",
    "already": "allready",
    "address": "adress",
    "weird": "wierd",
    "doesn't": "doesnt",
    "can't": "cant",
    "it's": "its",
    "the": "teh",
    "still": "stil",
    "anymore": "any more",
    "couple": "coupel",
}


def generate_tickets(n: int, seed: int) -> list[dict]:
    """``n`` distinct tickets as ``{"text": str, "record": dict}``; same (n, seed), same rows."""
    if n < 0:
        raise ConfigError(f"cannot generate {n} tickets: the count must be 0 or more")
    return _draw(n, random.Random(seed), taken=set())


def demo_splits(
    train_size: int = 1000, val_size: int = 100, test_size: int = 100, seed: int = 0
) -> dict[str, list[dict]]:
    """Train/validation/test tickets with disjoint texts.

    Test is drawn first and validation second, so they do not change when ``train_size`` does.
    """
    sizes = {"test": test_size, "validation": val_size, "train": train_size}
    for split, size in sizes.items():
        if size < 0:
            raise ConfigError(f"{split} size {size} is negative; use 0 or more tickets")
    taken: set[str] = set()
    splits = {}
    for split, size in sizes.items():
        splits[split] = _draw(size, random.Random(f"ftlight-demo/{seed}/{split}"), taken)
    return {k: splits[k] for k in ("train", "validation", "test")}


def to_sft_rows(tickets: list[dict]) -> list[dict]:
    """Alpaca rows: the fixed instruction, the ticket as input, the compact JSON record."""
    return [
        {"instruction": INSTRUCTION, "input": t["text"], "output": record_to_json(t["record"])}
        for t in tickets
    ]


def to_classification_rows(tickets: list[dict]) -> list[dict]:
    """Rows of ``text`` and ``label`` (the category) for sequence classification."""
    return [{"text": t["text"], "label": t["record"]["category"]} for t in tickets]


def record_to_json(record: dict) -> str:
    """The record as one line of JSON with the keys in ``FIELDS`` order."""
    return json.dumps({k: record[k] for k in FIELDS}, separators=(", ", ": "))


def _draw(n: int, rng: random.Random, taken: set[str]) -> list[dict]:
    """``n`` tickets whose texts are not in ``taken``; adds them to ``taken``."""
    rows = []
    while len(rows) < n:
        row = _ticket(rng)
        if row["text"] not in taken:
            taken.add(row["text"])
            rows.append(row)
    return rows


def _ticket(rng: random.Random) -> dict:
    """One random ticket and its record."""
    category = rng.choice(CATEGORIES)
    issue, priority = rng.choice(_ISSUES[category])
    product = rng.choice(list(PRODUCTS))
    alias = rng.choice(PRODUCTS[product])
    issue_text = issue.format(product=alias, days=rng.randint(3, 21))
    body = [issue_text]
    if rng.random() < 0.5:
        body.append(rng.choice(_DETAILS[category]))

    order_id = None
    if rng.random() < _ORDER_RATE[category]:
        digits = f"{rng.randint(10000, 99999)}"
        order_id = rng.choice("ABCDEFGHKMNPRSTX") + digits if rng.random() < 0.5 else digits
        shown = rng.choice(("#", "", "#")) + order_id
        body.insert(rng.randint(1, len(body)), rng.choice(_ORDER_SENTENCES).format(oid=shown))

    cue = rng.random()
    if cue < 0.2:
        body.insert(rng.choice((0, len(body))), rng.choice(_HIGH_CUES))
        priority = "high"
    elif cue < 0.4:
        body.insert(rng.choice((0, len(body))), rng.choice(_LOW_CUES))
        priority = "low"

    chatter = rng.sample(_CHATTER, k=len(_CHATTER))  # a shuffled copy: no sentence twice
    before = [chatter.pop()] if rng.random() < 0.3 else []
    after = [chatter.pop()] if rng.random() < 0.3 else []
    greeting = rng.choice(_GREETINGS) + rng.choice((",", "!", "", " -"))
    closing = rng.choice(_CLOSINGS) + rng.choice((",\n" + rng.choice(_NAMES), "!", ""))
    while len(" ".join([greeting, *before, *body, *after, closing]).split()) < 25:
        (before if rng.random() < 0.5 else after).append(chatter.pop())
    text = greeting + rng.choice(("\n", " ")) + " ".join(before + body + after) + "\n" + closing
    style = rng.random()
    if style < 0.06:  # shouting the problem
        text = text.replace(issue_text, issue_text.upper())
    if rng.random() < 0.25:
        text = _add_typos(text, rng)
    if style > 0.88:  # typed all in lower case
        text = text.lower()

    record = {"category": category, "priority": priority, "product": product}
    record["order_id"] = order_id
    return {"text": text, "record": record}


def _add_typos(text: str, rng: random.Random) -> str:
    """Misspell one or two common words (never a product name or an order id)."""
    present = [w for w in _TYPOS if re.search(rf"\b{re.escape(w)}\b", text)]
    for word in rng.sample(present, k=min(len(present), rng.choice((1, 2)))):
        text = re.sub(rf"\b{re.escape(word)}\b", _TYPOS[word], text, count=1)
    return text
