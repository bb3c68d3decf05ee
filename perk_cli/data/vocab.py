"""Word lists shared by the task generators and the tiny preset's tokenizer corpus."""

PEOPLE = ["Mary", "John", "Sandra", "Daniel", "Jeff", "Bill", "Fred", "Julie", "Emily", "Gertrude"]
LOCATIONS = ["bathroom", "bedroom", "garden", "hallway", "kitchen", "office", "cinema", "park", "school"]
OBJECTS = ["apple", "football", "milk", "book", "key", "box", "ball", "cup"]
MOVE_VERBS = ["went to", "journeyed to", "travelled to", "moved to", "went back to"]
TAKE_VERBS = ["picked up", "got", "grabbed", "took"]
DROP_VERBS = ["dropped", "discarded", "put down", "left"]

FIRST_NAMES = [
    "Alison", "Sarah", "Cathy", "Bryce", "Felicia", "Helen", "Marcus", "Priya", "Tomas", "Yuki",
    "Omar", "Lena", "Diego", "Grace", "Ivan", "Nora", "Kwame", "Sofia", "Ethan", "Mei",
]
LAST_NAMES = [
    "Keith", "Stewart", "Duarte", "Stokes", "Hardy", "Johnson", "Okafor", "Patel", "Novak", "Tanaka",
    "Haddad", "Berg", "Ramos", "Kim", "Petrov", "Walsh", "Mensah", "Rossi", "Clarke", "Chen",
]
YEARS = ["Freshman", "Sophomore", "Junior", "Senior"]
SCHOOLS_MAJORS = {
    "School of Engineering": ["Civil Engineering", "Mechanical Engineering", "Electrical Engineering"],
    "School of Arts and Humanities": ["History", "Philosophy", "Religious Studies", "Drama"],
    "School of Computer Information and Data Sciences": ["Computer Science", "Data Science"],
    "School of Natural Sciences": ["Biology", "Chemistry", "Physics", "Mathematics"],
    "School of Business": ["Finance", "Marketing", "Accounting"],
}

COMMON_WORDS = (
    "the a an of to in and is was were be it that this for on with as by at from or but not what "
    "where who which when how many much before after then there here document documents memorized "
    "question answer student name year school major grade id yes no highest lowest average same "
    "higher lower than is event you have"
).split()
