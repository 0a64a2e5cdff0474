"""Course tooling, not course content: notebook parameters and checks, exercises, the student release, grading, running the course."""
