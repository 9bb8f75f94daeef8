"""The vocabulary of the generated ad world: a two-level industry taxonomy and the words its ads are made of.

Ads of one sub-industry draw from the same products and attributes, so similar ads read alike (what a text encoder
and semantic IDs should pick up). Each sub-industry names the content categories its audience also consumes (the
cross-domain signal) and a price level for bids. Brands are invented.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SubIndustry:
    path: str  # industry/sub_industry
    brands: tuple[str, ...]
    products: tuple[str, ...]
    attributes: tuple[str, ...]
    content_categories: tuple[str, ...]
    bid_level: float  # median bid per click, in currency units
    share: float  # relative number of ads


def _s(path, brands, products, attributes, categories, bid, share=1.0) -> SubIndustry:
    return SubIndustry(path, tuple(brands.split(", ")), tuple(products.split(", ")),
                       tuple(attributes.split(", ")), tuple(categories.split(", ")), bid, share)


SUB_INDUSTRIES: tuple[SubIndustry, ...] = (
    _s("ecommerce/apparel", "Lunara, Threadly, Northpeak, Velora, Kestrel Wear",
       "down jacket, running shoes, denim jeans, wool coat, silk dress, hoodie, sneakers",
       "lightweight, waterproof, slim fit, limited edition, breathable, recycled fabric",
       "fashion, lifestyle", 0.9, 1.6),
    _s("ecommerce/beauty", "Glowa, Rosemist, Dermique, Petalia, Lumiere Lab",
       "face serum, sunscreen, lipstick, moisturiser, cleansing oil, eye cream",
       "hydrating, fragrance-free, SPF 50, vitamin C, for sensitive skin, long-lasting",
       "beauty, fashion", 1.1, 1.4),
    _s("ecommerce/electronics", "Voltix, Nimbus, Arcwave, Pixeon, Soundra",
       "wireless earbuds, smartphone, laptop, smartwatch, tablet, power bank, 4K monitor",
       "noise cancelling, fast charging, 120Hz display, long battery life, ultra-thin, waterproof",
       "tech, gaming", 1.4, 1.5),
    _s("ecommerce/home_goods", "Hearthly, Nestwell, Cozora, Oakline, Brightnest",
       "robot vacuum, air fryer, memory foam mattress, standing desk, air purifier, coffee machine",
       "quiet, energy saving, compact, smart app control, easy to clean, 5-year warranty",
       "home, food", 1.0, 1.2),
    _s("games/casual", "Puzzlepop, Candyverse, Tilecraft, Bubblo, Merge Town",
       "match-3 puzzle, word game, merge game, idle farm, tile puzzle",
       "play offline, daily rewards, hundreds of levels, relaxing, play with friends",
       "gaming, entertainment", 0.6, 1.2),
    _s("games/strategy", "Warcrest, Empire Forge, Starlord Tactics, Kingsgate, Ironclad",
       "strategy game, card battler, tower defense, MMO RPG, war game",
       "real-time battles, guild wars, epic heroes, free to play, new season",
       "gaming, tech", 0.8, 1.0),
    _s("finance/credit_card", "Unity Bank, Crestline, Mintpay, Harbor Credit, Apex Card",
       "credit card, cashback card, travel card, student card",
       "no annual fee, 5% cashback, airport lounge access, instant approval, interest-free period",
       "money, travel", 2.6, 0.9),
    _s("finance/insurance", "Shieldwell, Safeharbor, Evercare, Guardline, Trustmark",
       "health insurance, car insurance, travel insurance, life insurance, pet insurance",
       "low premium, fast claims, family plan, no medical exam, 24/7 support",
       "money, health", 3.0, 0.8),
    _s("finance/wealth", "Goldleaf, Summit Funds, Tidewise, Capstone, Ledgerline",
       "index fund, savings account, robo-advisor, gold savings plan, pension plan",
       "low fees, daily interest, start from 100, flexible withdrawal, expert managed",
       "money, careers", 2.8, 0.8),
    _s("education/language", "Lingora, Speakeasy Academy, Wordbridge, Polyglow, Fluentia",
       "English course, Japanese course, IELTS prep, business English, kids English",
       "native teachers, 1-on-1 lessons, free trial class, AI speaking practice, certificate",
       "study, careers", 1.8, 0.9),
    _s("education/coding", "Codepath, Bytecamp, Stackschool, Devforge, Logiclab",
       "Python bootcamp, data science course, web development course, AI course, coding for kids",
       "project based, job guarantee, live mentors, beginner friendly, weekend classes",
       "study, tech, careers", 2.0, 0.7),
    _s("education/exam_prep", "Topscore, Passmark, Examwise, Scholarly, Brightpath",
       "civil service exam prep, graduate entrance prep, CPA course, driving test app",
       "past papers, mock exams, high pass rate, study plan, video lectures",
       "study, careers", 1.6, 0.7),
    _s("travel/hotel", "Staywell, Lumen Hotels, Coastline Resorts, Urban Nest, Pinecrest Inn",
       "city hotel, beach resort, ski lodge, boutique hotel, family suite",
       "free breakfast, sea view, free cancellation, near the metro, members price",
       "travel, food", 1.5, 0.9),
    _s("travel/flight", "Skyway, Aerolink, Jetstream Air, Cloudhop, Horizon Fly",
       "round-trip flights, weekend getaway, holiday package, business class upgrade",
       "flash sale, free checked bag, direct flights, earn miles, flexible dates",
       "travel, lifestyle", 1.7, 0.8),
    _s("auto/ev", "Voltra Motors, Ecodrive, Lumen Auto, Zephyr EV, Greenwheel",
       "electric SUV, electric sedan, home charger, hybrid hatchback",
       "600 km range, fast charging, test drive today, smart cockpit, zero down payment",
       "cars, tech", 3.4, 0.7),
    _s("auto/used_car", "Carvista, Motorhub, Drivemart, Autotrust, Wheelhouse",
       "certified used car, car valuation, car loan, used SUV",
       "inspected 200 points, 7-day return, low mileage, transparent price, free warranty",
       "cars, money", 2.2, 0.6),
    _s("food/delivery", "Dishdash, Fastbite, Hungrybox, Noodlerun, Freshcart",
       "food delivery, grocery delivery, meal kit, bubble tea, late-night snacks",
       "30-minute delivery, free delivery, new user coupon, 50% off, fresh ingredients",
       "food, lifestyle", 0.7, 1.1),
    _s("food/snacks", "Crunchio, Nutwise, Sweetfield, Spicebox, Mochi House",
       "mixed nuts, spicy chips, dark chocolate, dried fruit, instant noodles",
       "low sugar, family pack, new flavour, buy 2 get 1, high protein",
       "food, entertainment", 0.5, 0.9),
    _s("health/fitness", "Fitcore, Pulsegym, Stridefit, Zenflow, Ironbody",
       "gym membership, yoga classes, fitness tracker, home treadmill, protein powder",
       "first month free, personal trainer, fat burning, 24-hour access, beginner plan",
       "fitness, health", 1.2, 0.9),
    _s("health/clinic", "Carewell Clinic, Brightsmile Dental, Clearview Eye, Vitalab, Medinest",
       "dental implant, teeth whitening, eye exam, health check-up, online doctor",
       "book online, no waiting, certified doctors, insurance accepted, same-day results",
       "health, lifestyle", 2.4, 0.7),
)

# Non-commercial categories: what users watch and read for leisure, unrelated to any ad intent.
LEISURE_CATEGORIES: tuple[str, ...] = ("emotion", "entertainment", "comedy", "news", "sports", "pets", "music")

CONTENT_CATEGORIES: tuple[str, ...] = tuple(sorted(
    {c for s in SUB_INDUSTRIES for c in s.content_categories} | set(LEISURE_CATEGORIES)
))

# Words content titles are made of, per category.
CONTENT_TOPICS: dict[str, tuple[str, ...]] = {
    "fashion": ("street style", "capsule wardrobe", "winter outfits", "sneaker culture", "runway trends"),
    "lifestyle": ("morning routine", "city life", "minimalist living", "weekend plans", "productivity"),
    "beauty": ("skincare routine", "makeup tutorial", "sunscreen myths", "glass skin", "10-step routine"),
    "tech": ("new phone launch", "laptop buying guide", "AI gadgets", "earbuds comparison", "smart home"),
    "gaming": ("speedrun", "esports final", "game review", "hidden levels", "patch notes"),
    "home": ("small apartment makeover", "kitchen hacks", "cleaning tips", "desk setup", "decor ideas"),
    "food": ("street food tour", "easy dinner recipes", "bubble tea ranking", "baking basics", "spicy challenge"),
    "money": ("saving money", "credit score", "investing for beginners", "budget planner", "side hustle"),
    "careers": ("job interview tips", "salary negotiation", "remote work", "career change", "resume mistakes"),
    "study": ("exam week", "study with me", "language learning", "note-taking", "scholarship tips"),
    "travel": ("hidden beaches", "budget travel", "hotel review", "airport tips", "3-day itinerary"),
    "cars": ("EV road trip", "car review", "used car buying", "charging stations", "first car"),
    "fitness": ("home workout", "marathon training", "yoga for beginners", "gym mistakes", "meal prep"),
    "health": ("sleep better", "dental care", "eye health", "annual check-up", "stress relief"),
    "emotion": ("breakup story", "letters to my mom", "healing playlist", "friendship", "late-night thoughts"),
    "entertainment": ("celebrity news", "movie trailer", "variety show", "behind the scenes", "drama recap"),
    "comedy": ("sketch comedy", "prank gone wrong", "stand-up clip", "funny pets", "office humour"),
    "news": ("local news", "weather alert", "policy update", "market close", "world news"),
    "sports": ("football highlights", "basketball finals", "badminton rally", "swimming record", "F1 recap"),
    "pets": ("cat compilation", "puppy training", "pet grooming", "rescue story", "aquarium setup"),
    "music": ("live concert", "cover song", "album review", "guitar lesson", "chart countdown"),
}

CONTENT_TITLE_TEMPLATES: tuple[str, ...] = (
    "{topic}: what nobody tells you",
    "{n} minutes of {topic}",
    "I tried {topic} for {n} days",
    "The ultimate guide to {topic}",
    "{topic} | part {n}",
    "Why everyone is talking about {topic}",
    "{topic}, explained in {n} steps",
    "Watch this before trying {topic}",
)

AD_TITLE_TEMPLATES: tuple[str, ...] = (
    "{brand} {product} - {attribute}",
    "{attribute} {product} by {brand}",
    "New {brand} {product}: {attribute}",
    "{brand} | {product}, {attribute}",
)

AD_DESCRIPTION_TEMPLATES: tuple[str, ...] = (
    "{brand} {product}: {attribute}, {attribute2}. {cta}",
    "Looking for a {product}? {brand} brings {attribute} and {attribute2}. {cta}",
    "{attribute} and {attribute2} - the {product} from {brand}. {cta}",
)

CALLS_TO_ACTION: dict[str, tuple[str, ...]] = {
    "web_page": ("Learn more.", "See the details."),
    "app_download": ("Download the app now.", "Install and start today."),
    "mini_program": ("Open the mini program.", "Tap to try it."),
    "store_product": ("Shop now.", "Order today."),
    "lead_form": ("Sign up for a free consultation.", "Leave your number and we call you."),
}

QUERY_TEMPLATES_COMMERCIAL: tuple[str, ...] = (
    "{product} price", "best {product}", "{brand} {product} review", "{attribute} {product}",
    "{product} discount", "{brand} official",
)
QUERY_TEMPLATES_LEISURE: tuple[str, ...] = ("{topic}", "{topic} video", "latest {topic}", "{topic} today")

# Profile vocabularies.
CITIES: dict[str, tuple[str, ...]] = {
    "Shenzhen": ("Nanshan", "Futian", "Luohu", "Bao'an"),
    "Guangzhou": ("Tianhe", "Haizhu", "Yuexiu"),
    "Beijing": ("Chaoyang", "Haidian", "Dongcheng", "Xicheng"),
    "Shanghai": ("Pudong", "Xuhui", "Jing'an", "Minhang"),
    "Chengdu": ("Wuhou", "Jinjiang", "Qingyang"),
    "Hangzhou": ("Xihu", "Binjiang", "Gongshu"),
    "Wuhan": ("Wuchang", "Hongshan", "Jianghan"),
    "Xi'an": ("Yanta", "Beilin"),
    "Nanjing": ("Gulou", "Xuanwu"),
    "Kunming": ("Wuhua", "Panlong"),
}
EDUCATION_LEVELS: tuple[str, ...] = ("high school", "vocational", "bachelor", "master", "doctorate")
OCCUPATIONS: tuple[str, ...] = (
    "student", "software engineer", "teacher", "nurse", "sales", "civil servant", "designer", "driver",
    "business owner", "factory worker", "accountant", "retired", "freelancer", "marketing",
)
LANDING_TYPE_CONVERSION: dict[str, float] = {  # relative conversion propensity after a click
    "web_page": 0.6, "app_download": 1.4, "mini_program": 1.0, "store_product": 1.2, "lead_form": 0.8,
}

# What a click on an ad of each industry typically opens (probabilities in LANDING_TYPES order:
# web_page, app_download, mini_program, store_product, lead_form).
LANDING_MIX_BY_INDUSTRY: dict[str, tuple[float, ...]] = {
    "ecommerce": (0.10, 0.05, 0.35, 0.50, 0.00),
    "games": (0.05, 0.85, 0.10, 0.00, 0.00),
    "finance": (0.35, 0.20, 0.10, 0.00, 0.35),
    "education": (0.30, 0.20, 0.15, 0.00, 0.35),
    "travel": (0.40, 0.25, 0.35, 0.00, 0.00),
    "auto": (0.35, 0.10, 0.10, 0.00, 0.45),
    "food": (0.05, 0.35, 0.45, 0.15, 0.00),
    "health": (0.35, 0.10, 0.20, 0.10, 0.25),
}
QUERY_MODIFIERS: tuple[str, ...] = (
    "2026", "near me", "cheap", "for students", "for women", "for men", "for kids", "reviews", "deals",
    "under 100", "under 500", "official store", "vs", "how to choose", "worth it", "free trial",
) + tuple(f"in {city}" for city in CITIES)
