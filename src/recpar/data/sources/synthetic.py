"""`synthetic-amazon`: a seeded generator with the shape of Amazon Electronics 5-core.

At `scale` s it makes round(192,403 s) users, round(63,001 s) items and round(1,689,188 s)
interactions (8.78 per user on average, as in the real file), such that by construction

- every user and every item has >= 5 interactions (the 5-core filter removes nothing),
- no user-item pair repeats (deduplication removes nothing),
- item popularity is heavy-tailed: each item's extra interactions beyond the 5 are drawn with
  probability proportional to rank**-ITEM_ZIPF_EXPONENT (Zipf-like, ranks shuffled over ids),
- user activity is right-skewed (log-normal weights for the extras beyond 5),
- timestamps are whole days (midnight UTC) between 1999-01-01 and 2014-07-31, with activity
  growing exponentially over time (as the review volume of the real store did),
- titles read "<brand> <adjective> <product noun> <model>" from per-category vocabularies;
  users lean towards one product category, so the data carry some learnable signal.

Every step is vectorised numpy; only the per-user/per-item id and title strings are built in
Python. The shape statistics match the real file by construction; nothing else about the real
data (e.g. its degree distributions) is claimed to match.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recpar.data.errors import DataError
from recpar.data.item_text import compose_item_text
from recpar.data.sources.base import RawInteractions, Source

# Amazon Electronics 5-core (McAuley et al. 2014 release), the shape at scale 1.0
AMAZON_5CORE_USERS = 192_403
AMAZON_5CORE_ITEMS = 63_001
AMAZON_5CORE_INTERACTIONS = 1_689_188

MIN_DEGREE = 5  # every user and item gets at least this many interactions (5-core)
ITEM_ZIPF_EXPONENT = 0.6  # chosen: at scale 1 the top item gets ~0.4 % of all interactions
USER_LOGNORMAL_SIGMA = 1.0  # chosen spread of user activity beyond the minimum
GROWTH_TAU_DAYS = 730.0  # chosen: activity grows by e every two years
CATEGORY_EXPLORE = 0.25  # share of a user's interactions outside their home category
ITEMS_PER_CATEGORY_MIN = 100  # fewer categories at small scale, so each has enough items
MAX_SWAP_ROUNDS = 200  # bound on the duplicate-repair loop (a few rounds suffice in practice)
FIRST_DAY = _dt.date(1999, 1, 1)
LAST_DAY = _dt.date(2014, 7, 31)  # the 2014 release ends in July 2014
SECONDS_PER_DAY = 86_400

# category -> product nouns (generic words; no real product names)
CATEGORIES: dict[str, tuple[str, ...]] = {
    "Headphones": ("Headphones", "Earbuds", "Headset", "In-Ear Monitors"),
    "Speakers": ("Bluetooth Speaker", "Soundbar", "Bookshelf Speakers", "Subwoofer"),
    "Cables": ("HDMI Cable", "USB-C Cable", "Audio Cable", "Ethernet Cable"),
    "Chargers": ("Wall Charger", "Car Charger", "Power Bank", "Charging Dock"),
    "Cameras": ("Digital Camera", "Action Camera", "Webcam", "Dash Cam"),
    "Camera Accessories": ("Tripod", "Camera Bag", "Lens Filter", "Memory Card Reader"),
    "Laptops": ("Laptop", "Notebook", "Ultrabook", "Chromebook"),
    "Computer Accessories": ("Wireless Mouse", "Keyboard", "Laptop Stand", "USB Hub"),
    "Storage": ("External Hard Drive", "SSD", "USB Flash Drive", "microSD Card"),
    "Networking": ("Wi-Fi Router", "Range Extender", "Network Switch", "Powerline Adapter"),
    "Television": ("LED TV", "TV Wall Mount", "Streaming Stick", "Universal Remote"),
    "Car Electronics": ("Car Stereo", "GPS Navigator", "Backup Camera", "FM Transmitter"),
    "Phone Accessories": ("Phone Case", "Screen Protector", "Phone Mount", "Selfie Stick"),
    "Tablets": ("Tablet", "E-Reader", "Tablet Case", "Stylus"),
    "Printers": ("Inkjet Printer", "Laser Printer", "Photo Printer", "Label Maker"),
    "Monitors": ("Monitor", "Monitor Arm", "Privacy Screen", "Portable Display"),
    "Home Audio": ("Stereo Receiver", "Turntable", "CD Player", "Amplifier"),
    "Gaming": ("Game Controller", "Gaming Mouse", "Gaming Headset", "Mouse Pad"),
    "Batteries": ("AA Batteries", "Rechargeable Batteries", "Battery Charger", "Coin Cells"),
    "Wearables": ("Fitness Tracker", "Smartwatch", "Watch Band", "Heart Rate Monitor"),
    "Security": ("Security Camera", "Video Doorbell", "Motion Sensor", "Smart Lock"),
    "Power": ("Surge Protector", "UPS Battery Backup", "Extension Cord", "Power Strip"),
    "Radio": ("Portable Radio", "Two-Way Radio", "Scanner", "Antenna"),
    "Projectors": ("Projector", "Projector Screen", "Document Camera", "Presentation Remote"),
}
ADJECTIVES = (
    "Compact", "Wireless", "Portable", "Rugged", "Slim", "Premium", "Ultra", "Pro", "Mini",
    "Heavy-Duty", "Lightweight", "Waterproof", "Smart", "Dual", "High-Speed", "Noise-Cancelling",
    "Universal", "Foldable", "Digital", "Classic", "Ergonomic", "Rechargeable", "4K", "HD",
    "Magnetic", "Adjustable", "Travel", "Studio", "Outdoor", "Advanced",
)
# invented brand names (not real companies)
BRANDS = (
    "Voltrix", "Auralis", "Nexon Labs", "Kestrel", "Quantaro", "Lumigo", "Brightwave", "Tecora",
    "Zyntek", "Orbique", "Sonivo", "Pexar", "Maxello", "Corvane", "Ventura Digital", "Helix Audio",
    "Strata", "Novalink", "Ampere Works", "Clarion Bay", "Vireo", "Ostrava Tech", "Polaris Gear",
    "Kinetix", "Fernwood", "Aerolite", "Zephyra", "Tundra Labs", "Meridian", "Cobalt & Co",
)


@dataclass(frozen=True)
class SyntheticShape:
    """Target sizes of one synthetic dataset."""

    n_users: int  # users, each with >= MIN_DEGREE interactions
    n_items: int  # items, each with >= MIN_DEGREE interactions
    n_interactions: int  # distinct user-item pairs

    @classmethod
    def from_scale(cls, scale: float) -> "SyntheticShape":
        shape = cls(
            n_users=round(AMAZON_5CORE_USERS * scale),
            n_items=round(AMAZON_5CORE_ITEMS * scale),
            n_interactions=round(AMAZON_5CORE_INTERACTIONS * scale),
        )
        if shape.n_items < 4 * MIN_DEGREE:
            raise DataError(
                f"scale={scale:g} is too small for synthetic-amazon: {shape.n_items} items, "
                f"need >= {4 * MIN_DEGREE} (scale >= {4 * MIN_DEGREE / AMAZON_5CORE_ITEMS:.1e})"
            )
        return shape


def _degrees(n: int, total: int, weights: np.ndarray, cap: int,
             rng: np.random.Generator) -> np.ndarray:
    """[n] int64 degrees >= MIN_DEGREE, <= cap, summing to `total`; extras ~ weights."""
    deg = np.full(n, MIN_DEGREE, dtype=np.int64)
    extra = total - MIN_DEGREE * n
    p = weights / weights.sum()
    while extra > 0:  # place extras; re-place whatever a capped row could not take
        deg += rng.multinomial(extra, p)
        over = np.maximum(deg - cap, 0)
        extra = int(over.sum())
        deg -= over
        p = np.where(deg < cap, p, 0.0)
        p = p / p.sum()
    return deg


def _repair_duplicates(users: np.ndarray, items: np.ndarray, n_items: int,
                       rng: np.random.Generator) -> int:
    """Swap the items of repeated (user, item) edges with random other edges until none repeat.

    A swap exchanges items between two edges, so every user's and item's degree is kept.
    Modifies `items` in place; returns the number of rounds used.
    """
    n = len(users)
    for rounds in range(MAX_SWAP_ROUNDS):
        key = users * n_items + items
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        dup = order[np.flatnonzero(sorted_key[1:] == sorted_key[:-1]) + 1]
        if len(dup) == 0:
            return rounds
        others = np.ones(n, dtype=bool)
        others[dup] = False
        partners = rng.choice(np.flatnonzero(others), size=len(dup), replace=False)
        items[dup], items[partners] = items[partners], items[dup].copy()
    raise DataError(
        f"synthetic-amazon: duplicate pairs remain after {MAX_SWAP_ROUNDS} repair rounds "
        "(scale too small for the requested density)"
    )


def _day_offsets(n: int, n_days: int, rng: np.random.Generator) -> np.ndarray:
    """[n] int64 day offsets in [0, n_days) with density ~ exp(day / GROWTH_TAU_DAYS)."""
    u = rng.random(n)
    growth = np.expm1(n_days / GROWTH_TAU_DAYS)  # inverse CDF of the truncated exponential
    days = GROWTH_TAU_DAYS * np.log1p(u * growth)
    return np.minimum(days.astype(np.int64), n_days - 1)


class SyntheticAmazon(Source):
    """Seeded synthetic data with the Amazon Electronics 5-core shape at any scale."""

    name = "synthetic-amazon"
    scalable = True

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.shape = SyntheticShape.from_scale(self.options.scale)
        self._interactions: RawInteractions | None = None
        self._items: pd.DataFrame | None = None

    def describe(self) -> str:
        return f"{self.name}: nothing to download (generated from seed and scale)"

    def _generate(self) -> None:
        s = self.shape
        rng = np.random.default_rng([self.options.seed, 0x5EED_A3A2])
        n_users, n_items, n = s.n_users, s.n_items, s.n_interactions
        if n < MIN_DEGREE * max(n_users, n_items) or n > n_users * n_items:
            raise DataError(f"synthetic-amazon: infeasible shape {s}")

        # categories: fewer at small scale so each keeps enough items to sample from
        n_cat = int(np.clip(n_items // ITEMS_PER_CATEGORY_MIN, 1, len(CATEGORIES)))
        cat_names = list(CATEGORIES)[:n_cat]
        item_cat = rng.integers(0, n_cat, size=n_items)  # [n_items]

        # degrees (caps: a user cannot take an item twice, nor an item a user twice)
        zipf = rng.permutation(np.arange(1, n_items + 1, dtype=np.float64) ** -ITEM_ZIPF_EXPONENT)
        item_deg = _degrees(n_items, n, zipf, n_users, rng)  # [n_items]
        user_w = rng.lognormal(0.0, USER_LOGNORMAL_SIGMA, size=n_users)
        user_deg = _degrees(n_users, n, user_w, n_items, rng)  # [n_users]

        # users lean to a home category, chosen in proportion to the category's item stubs
        cat_mass = np.bincount(item_cat, weights=item_deg, minlength=n_cat)
        cat_p = cat_mass / cat_mass.sum()
        home = rng.choice(n_cat, size=n_users, p=cat_p)  # [n_users]

        # pair user stubs with item stubs, both ordered by (category + jitter): mostly within
        # the category; CATEGORY_EXPLORE of the user stubs pick a random category instead
        user_stub = np.repeat(np.arange(n_users, dtype=np.int64), user_deg)  # [n]
        stub_cat = home[user_stub]
        explore = rng.random(n) < CATEGORY_EXPLORE
        stub_cat[explore] = rng.choice(n_cat, size=int(explore.sum()), p=cat_p)
        user_stub = user_stub[np.argsort(stub_cat + rng.random(n), kind="stable")]
        item_stub = np.repeat(np.arange(n_items, dtype=np.int64), item_deg)  # [n]
        item_stub = item_stub[np.argsort(item_cat[item_stub] + rng.random(n), kind="stable")]
        _repair_duplicates(user_stub, item_stub, n_items, rng)

        n_days = (LAST_DAY - FIRST_DAY).days + 1
        first = int(_dt.datetime(FIRST_DAY.year, FIRST_DAY.month, FIRST_DAY.day,
                                 tzinfo=_dt.timezone.utc).timestamp()) // SECONDS_PER_DAY
        ts = (first + _day_offsets(n, n_days, rng)) * SECONDS_PER_DAY  # [n] int64 seconds

        uw, iw = len(str(n_users - 1)), len(str(n_items - 1))
        user_ids = np.array([f"SU{u:0{uw}d}" for u in range(n_users)], dtype=object)
        item_ids = np.array([f"SI{i:0{iw}d}" for i in range(n_items)], dtype=object)
        self._interactions = RawInteractions(user_stub, item_stub, ts, user_ids, item_ids)

        # titles: "<brand> <adjective> <noun> <model>"; vectorised draws, strings in Python
        brand = rng.integers(0, len(BRANDS), size=n_items)
        adj = rng.integers(0, len(ADJECTIVES), size=n_items)
        noun = rng.integers(0, 4, size=n_items)  # every category has 4 nouns
        letters = rng.integers(0, 26, size=(n_items, 2))
        number = rng.integers(10, 1000, size=n_items)
        titles, texts = [], []
        for i in range(n_items):
            c = cat_names[item_cat[i]]
            model = f"{chr(65 + letters[i, 0])}{chr(65 + letters[i, 1])}-{number[i]}"
            title = f"{BRANDS[brand[i]]} {ADJECTIVES[adj[i]]} {CATEGORIES[c][noun[i]]} {model}"
            titles.append(title)
            texts.append(compose_item_text(title, BRANDS[brand[i]], [f"Electronics > {c}"]))
        self._items = pd.DataFrame({"raw_id": item_ids, "title": titles, "text": texts})

    def interactions(self) -> RawInteractions:
        if self._interactions is None:
            self._generate()
        assert self._interactions is not None
        return self._interactions

    def item_metadata(self, raw_item_ids: Iterable[str]) -> pd.DataFrame:
        if self._items is None:
            self._generate()
        assert self._items is not None
        wanted = set(raw_item_ids)
        keep = np.fromiter((r in wanted for r in self._items["raw_id"].tolist()), dtype=bool,
                           count=len(self._items))
        return self._items[keep].reset_index(drop=True)
