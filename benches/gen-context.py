# Generates the cache benchmark context: 10,000 source-like files (~120 MB) under src/, an empty
# requirements.txt and a Dockerfile (busybox base; COPY requirements, RUN, COPY . ., RUN). Deterministic.
# Usage: python3 benches/gen-context.py DIR
import os, random, sys
root = sys.argv[1]
random.seed(42)
words = [("".join(random.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(random.randint(2,10)))) for _ in range(5000)]
total = 0
for i in range(10000):
    d = os.path.join(root, "src", f"pkg{i % 100:02d}", f"mod{(i // 100) % 10}")
    os.makedirs(d, exist_ok=True)
    size = random.randint(2000, 22000)
    lines = []
    n = 0
    while n < size:
        line = " ".join(random.choice(words) for _ in range(random.randint(3, 12)))
        lines.append(line); n += len(line) + 1
    data = "\n".join(lines)
    with open(os.path.join(d, f"file{i}.py"), "w") as f: f.write(data)
    total += len(data)
with open(os.path.join(root, "requirements.txt"), "w") as f: f.write("")
with open(os.path.join(root, "Dockerfile"), "w") as f:
    f.write("FROM busybox\nWORKDIR /app\nCOPY requirements.txt .\nRUN echo deps > /deps.txt\nCOPY . .\nRUN ls -R /app | wc -l > /count.txt\nCMD [\"sh\"]\n")
print(total)
